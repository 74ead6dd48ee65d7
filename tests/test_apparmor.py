"""The AppArmor template edit, on a copy of libvirt's real template, checked by the real parser."""

import shutil
import subprocess
from dataclasses import replace

import pytest

from tasks import apparmor, config
from tasks.errors import DaliError

LIBVIRT_TEMPLATE = "/etc/apparmor.d/libvirt/TEMPLATE.qemu"


@pytest.fixture
def cluster(tmp_path):
    template = tmp_path / "TEMPLATE.qemu"
    shutil.copy(LIBVIRT_TEMPLATE, template)
    c = config.load(env={})
    return replace(c, apparmor_template=template)


def parses(path) -> bool:
    return subprocess.run(["apparmor_parser", "-Q", "-K", "--skip-cache", str(path)],
                          capture_output=True).returncode == 0


def test_rule_added_once_after_the_include_and_removed_exactly(cluster):
    template = cluster.apparmor_template
    pristine = template.read_text()
    assert not apparmor.has_rule(cluster)
    apparmor.add_rule(cluster)
    apparmor.add_rule(cluster)  # idempotent
    lines = template.read_text().splitlines()
    rule = '  "/var/lib/dali/ivp/FAM" rw,  # dali cluster ivp: the shared NVDIMM backing file'
    assert lines.count(rule) == 1
    assert lines[lines.index(rule) - 1].strip() == apparmor.INCLUDE
    assert apparmor.has_rule(cluster) and parses(template)
    assert (template.parent / "TEMPLATE.qemu.dali-backup").read_text() == pristine
    apparmor.remove_rule(cluster)
    assert template.read_text() == pristine
    assert not (template.parent / "TEMPLATE.qemu.dali-backup").exists()


def test_a_broken_template_is_left_untouched(cluster):
    template = cluster.apparmor_template
    broken = template.read_text().replace("#include <abstractions/libvirt-qemu>",
                                          "#include <abstractions/libvirt-qemu>\n  /oops r")
    template.write_text(broken)
    with pytest.raises(DaliError, match="would not parse"):
        apparmor.add_rule(cluster)
    assert template.read_text() == broken
    assert not list(template.parent.glob(".*dali-new"))


def test_absent_template_is_skipped(cluster, tmp_path, capsys):
    gone = replace(cluster, apparmor_template=tmp_path / "nope")
    apparmor.add_rule(gone)
    assert "skipped" in capsys.readouterr().err
    assert apparmor.has_rule(gone) is None
