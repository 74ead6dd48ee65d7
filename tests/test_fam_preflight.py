"""The FAM file and the host checks, on real files (fast: no libvirtd, no guest)."""

import grp
import os
import shutil
import stat
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from tasks import config, fam, owned, preflight
from tasks.errors import DaliError


@pytest.fixture
def cluster():
    # Not pytest's tmp_path: it lives in a 0700 folder, which preflight rightly rejects.
    base = Path(tempfile.mkdtemp(prefix="dali-test-", dir="/var/tmp"))
    base.chmod(0o755)
    yield config.load(env={"DALI_DIR": str(base / "ivp")})
    shutil.rmtree(base)


def test_fam_is_made_with_the_seeds_group_and_mode(cluster):
    assert not fam.fam_is_ready(cluster)
    fam.ensure_fam(cluster)
    st = cluster.fam_path.stat()
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 >= 1 << 30  # allocated, not sparse: fallocate
    assert grp.getgrgid(st.st_gid).gr_name == "libvirt-qemu"
    assert stat.S_IMODE(st.st_mode) == 0o664
    assert owned.is_ours(cluster.fam_path, "ivp")
    assert fam.fam_is_ready(cluster)


def test_existing_fam_is_never_truncated_or_recreated(cluster):
    fam.ensure_fam(cluster)
    with open(cluster.fam_path, "r+b") as f:
        f.write(b"shared data")
    inode = cluster.fam_path.stat().st_ino
    os.chmod(cluster.fam_path, 0o644)  # the permission trap from host-facts
    fam.ensure_fam(cluster)
    assert cluster.fam_path.stat().st_ino == inode
    assert cluster.fam_path.read_bytes()[:11] == b"shared data"
    assert stat.S_IMODE(cluster.fam_path.stat().st_mode) == 0o664


def test_fam_of_another_size_stops_with_the_reason(cluster):
    fam.ensure_fam(cluster)
    bigger = config.load(env={"DALI_DIR": str(cluster.data_dir)})
    bigger = replace(bigger, fam_size=2 << 30, max_memory=3 << 30)
    with pytest.raises(DaliError, match="fam.size") as e:
        fam.ensure_fam(bigger)
    assert "never resizes" in str(e.value)
    assert cluster.fam_path.stat().st_size == 1 << 30


def test_clean_leaves_a_fam_dali_did_not_make(cluster, capsys):
    cluster.data_dir.mkdir()
    cluster.fam_path.write_bytes(b"hand made")
    owned.remove_if_ours(cluster.fam_path, "ivp", print)
    assert cluster.fam_path.exists()
    assert "did not create" in capsys.readouterr().out


def test_preflight_names_a_directory_qemu_cannot_enter(cluster):
    os.chmod(cluster.data_dir.parent, 0o700)  # like a home directory
    found = preflight._data_dir_problems(cluster)
    assert len(found) == 1
    assert str(cluster.data_dir.parent) in found[0] and "libvirt-qemu" in found[0]
    assert "chmod o+x" in found[0]


def test_preflight_names_an_unwritable_dir():
    c = config.load(env={"DALI_DIR": "/proc/dali"})
    found = preflight._data_dir_problems(c)
    assert len(found) == 1 and "DALI_DIR" in found[0] and "/proc" in found[0]


def test_preflight_names_a_filesystem_without_fallocate(cluster, monkeypatch):
    def no_fallocate(*_):
        raise OSError(95, "Operation not supported")
    monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    found = preflight._data_dir_problems(cluster)
    assert found and "fallocate" in found[0] and "DALI_DIR" in found[0]


def test_preflight_passes_on_a_good_directory(cluster):
    assert preflight._data_dir_problems(cluster) == []
