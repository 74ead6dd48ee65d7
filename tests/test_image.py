"""Which mirror the host's apt uses, and when the guest root filesystem's recipe changes (fast;
building and booting the image is tests/test_cluster.py's job)."""

import json

import pytest

from dali import image_builder
from dali.apt_sources import DEFAULT_MIRROR, host_apt_mirror

DEB822_DEBIAN = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

DEB822_NODESOURCE = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""


def test_mirror_from_deb822(tmp_path):
    (tmp_path / "debian.sources").write_text(DEB822_DEBIAN)
    assert host_apt_mirror([str(tmp_path)]) == "http://mirror.example.org/debian"


def test_mirror_skips_security_and_third_parties(tmp_path):
    # Sorted before debian.sources, so they are looked at first and must be rejected.
    (tmp_path / "a-nodesource.sources").write_text(DEB822_NODESOURCE)
    (tmp_path / "b-google.list").write_text("deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
    (tmp_path / "c-docker.list").write_text("deb [arch=amd64] https://download.docker.com/linux/debian bookworm stable\n")
    (tmp_path / "d-security.list").write_text("deb http://security.debian.org/debian-security bookworm-security main\n")
    (tmp_path / "debian.sources").write_text(DEB822_DEBIAN)
    assert host_apt_mirror([str(tmp_path)]) == "http://mirror.example.org/debian"


def test_mirror_ignores_disabled_files_and_stanzas(tmp_path):
    (tmp_path / "a.sources.disabled-by-farm").write_text(DEB822_DEBIAN.replace("mirror.example.org", "disabled.example.org"))
    (tmp_path / "b.list.disabled").write_text("deb http://off.example.org/debian bookworm main\n")
    (tmp_path / "c.sources").write_text("Enabled: no\n" + DEB822_DEBIAN.replace("mirror.example.org", "off2.example.org"))
    assert host_apt_mirror([str(tmp_path)]) == DEFAULT_MIRROR


def test_mirror_from_one_line_sources_list(tmp_path):
    sources_list = tmp_path / "sources.list"
    sources_list.write_text(
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb-src http://src.example.org/debian bookworm main\n"
        "deb http://security.debian.org/ bookworm-security main\n"
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.de.debian.org/debian bookworm main contrib\n"
    )
    sources_d = tmp_path / "sources.list.d"
    sources_d.mkdir()
    (sources_d / "other.list").write_text("deb http://later.example.org/debian bookworm main\n")
    # sources.list comes first, as for apt
    assert host_apt_mirror([str(sources_list), str(sources_d)]) == "http://ftp.de.debian.org/debian"


def test_mirror_falls_back_when_nothing_usable(tmp_path):
    assert host_apt_mirror([str(tmp_path / "missing"), str(tmp_path)]) == "http://deb.debian.org/debian"


def recipe(**changes):
    args = {"suite": "bookworm", "mirror": "http://deb.debian.org/debian", "http_proxy": "", "extra_packages": []}
    args.update(changes)
    return image_builder.rootfs_recipe(**args)


def tarball(r, tmp_path):
    return image_builder.rootfs_tarball_path(r, tmp_path)


def test_recipe_is_stable_and_json():
    assert recipe() == recipe()
    assert json.loads(json.dumps(recipe())) == recipe()
    assert set(image_builder.IMAGE_PACKAGES) <= set(recipe()["packages"])
    # Same packages in another order or twice: same tree.
    assert recipe(extra_packages=["vim", "less"]) == recipe(extra_packages=["less", "vim", "less"])
    assert recipe(mirror="http://deb.debian.org/debian/") == recipe()


@pytest.mark.parametrize("change", [
    {"suite": "trixie"},
    {"mirror": "http://ftp.de.debian.org/debian"},
    {"extra_packages": ["vim"]},
])
def test_recipe_changes_with_what_decides_the_tree(change, tmp_path):
    assert recipe(**change) != recipe()
    assert tarball(recipe(**change), tmp_path) != tarball(recipe(), tmp_path)


def test_proxy_is_carried_but_does_not_rename_the_tarball(tmp_path):
    with_proxy = recipe(http_proxy="http://proxy.example.org:3128")
    assert with_proxy["http_proxy"] == "http://proxy.example.org:3128"
    assert tarball(with_proxy, tmp_path) == tarball(recipe(), tmp_path)


def test_recipe_follows_the_guest_templates(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("a\n")
    monkeypatch.setattr(image_builder, "TEMPLATES_DIR", tmp_path)
    before = recipe()
    (tmp_path / "etc/hostname").write_text("b\n")
    assert recipe() != before
