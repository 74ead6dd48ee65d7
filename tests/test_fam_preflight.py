"""The FAM file, what it says about the namespace, and the host checks, on real files (fast:
no libvirtd, no guest)."""

import grp
import json
import os
import stat
import struct
import time
import uuid

import pytest
from pathlib import Path

from dali import fam, marks, settings
from dali.errors import DaliError
from dali.preflight import make_state_dir
from dali.storage.local import data_dir_problem
from support.files import local_files


def test_fam_is_made_with_the_seeds_group_and_mode(config_in, files_in):
    assert not fam.is_ready(config_in, files_in)
    fam.ensure(config_in, files_in, files_in.virt)
    st = config_in.fam_path.stat()
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 >= 1 << 30  # allocated, not sparse: fallocate
    assert grp.getgrgid(st.st_gid).gr_name == "libvirt-qemu"
    assert stat.S_IMODE(st.st_mode) == 0o664
    assert marks.is_ours(config_in.fam_path, config_in)
    assert fam.is_ready(config_in, files_in)


def test_existing_fam_is_never_truncated_or_recreated(config_in, files_in):
    fam.ensure(config_in, files_in, files_in.virt)
    with open(config_in.fam_path, "r+b") as f:
        f.write(b"shared data")
    inode = config_in.fam_path.stat().st_ino
    os.chmod(config_in.fam_path, 0o644)  # the permission trap from host-facts
    fam.ensure(config_in, files_in, files_in.virt)
    assert config_in.fam_path.stat().st_ino == inode
    assert config_in.fam_path.read_bytes()[:11] == b"shared data"
    assert stat.S_IMODE(config_in.fam_path.stat().st_mode) == 0o664


def test_fam_of_another_size_stops_with_the_reason(config_in, files_in):
    fam.ensure(config_in, files_in, files_in.virt)
    bigger = config_in._replace(fam_size=2 << 30, max_memory=3 << 30)
    with pytest.raises(DaliError, match="fam.size") as e:
        fam.ensure(bigger, local_files(bigger), files_in.virt)
    assert "never resizes" in str(e.value)
    assert config_in.fam_path.stat().st_size == 1 << 30


def test_a_new_fam_holds_a_raw_namespace(config_in, files_in):
    fam.ensure(config_in, files_in, files_in.virt)
    assert fam.namespace(config_in.fam_path) == {"mode": "raw", "size": 1 << 30, "data_offset": 0}


def test_the_namespace_is_read_from_the_info_block(tmp_path):
    """The bytes ndctl's fsdax reconfiguration leaves at 4 KiB, as measured on a real FAM of
    1 GiB: data offset 18 MiB, 2 MiB alignment; ndctl then reports size 1054867456."""
    image = tmp_path / "FAM"
    ns_uuid = uuid.uuid4()
    block = b"NVDIMM_PFN_INFO\0" + ns_uuid.bytes + bytes(16) + struct.pack(
        "<IHHQQIIII", 0, 1, 4, 18874368, 257536, 2, 0, 0, 2097152)
    with open(image, "wb") as f:
        f.truncate(1 << 30)
        f.seek(4096)
        f.write(block)
    assert fam.namespace(image) == {"mode": "fsdax", "uuid": str(ns_uuid), "size": 1054867456,
                                    "align": 2097152, "data_offset": 18874368}
    with open(image, "r+b") as f:
        f.seek(4096)
        f.write(b"NVDIMM_DAX_INFO\0")
    assert fam.namespace(image)["mode"] == "devdax"


def test_preflight_names_a_directory_qemu_cannot_enter(config_in):
    os.chmod(config_in.data_dir.parent, 0o700)  # like a home directory
    found = data_dir_problem(config_in)
    assert str(config_in.data_dir.parent) in found and "libvirt-qemu" in found
    assert "chmod o+x" in found and "\n" not in found


def write_config(tmp_path, text: str):
    path = tmp_path / "cluster.toml"
    path.write_text(text + "\n")
    return path


def test_preflight_names_an_unwritable_dir(tmp_path):
    blocker = tmp_path / "a-file"  # no directory can be made below a file
    blocker.write_text("")
    found = data_dir_problem(settings.load(env={"DALI_DIR": str(blocker / "dali")}))
    assert "DALI_DIR" in found and str(blocker) in found


def test_preflight_refuses_a_fam_larger_than_the_free_space(data_dir, tmp_path):
    huge = settings.load(write_config(tmp_path, '[fam]\nsize = "100T"'), env={"DALI_DIR": str(data_dir)})
    found = data_dir_problem(huge)
    assert found.startswith("fam.size:") and "free" in found and "\n" not in found


def test_a_share_holding_the_data_dir_or_the_checkout_is_refused(tmp_path):
    from dali.cluster import REPO
    for source, data in ((tmp_path, tmp_path / "data"), (REPO, tmp_path / "data")):
        cfg = write_config(tmp_path, f'[[share]]\nsource = "{source}"\ntarget = "/mnt/src"')
        with pytest.raises(settings.ConfigError, match="share source .* holds"):
            settings.load(cfg, env={"DALI_DIR": str(data)})


def test_preflight_names_a_filesystem_without_fallocate(config_in, monkeypatch):
    def no_fallocate(*_):
        raise OSError(95, "Operation not supported")
    monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    found = data_dir_problem(config_in)
    assert "fallocate" in found and "DALI_DIR" in found


def test_preflight_passes_on_a_good_directory(config_in):
    assert data_dir_problem(config_in) is None


def test_bytes_saved_before_a_write_are_put_back(config_in, files_in):
    """What verify relies on when it is killed between its writes and putting the blocks back."""
    make_state_dir(config_in)
    fam.ensure(config_in, files_in, files_in.virt)
    with open(config_in.fam_path, "r+b") as f:
        os.pwrite(f.fileno(), b"user data", 123 * 4096)
        os.pwrite(f.fileno(), b"more data", 200 * 4096)
    fam.save_before_write(config_in, files_in, {123 * 4096: b"user data", 200 * 4096: b"more data"},
                          until=time.time() + 600, writers="dali-test-writer[.]")
    with open(config_in.fam_path, "r+b") as f:
        os.pwrite(f.fileno(), b"verify!!!", 123 * 4096)  # ...and here the run is killed
        os.pwrite(f.fileno(), b"verify!!!", 200 * 4096)
    assert not fam.is_ready(config_in, files_in)  # so the next doit's fam task puts the bytes back
    fam.ensure(config_in, files_in, files_in.virt)  # no node runs: nothing of the run can still write
    with open(config_in.fam_path, "rb") as f:
        assert os.pread(f.fileno(), 9, 123 * 4096) == b"user data"
        assert os.pread(f.fileno(), 9, 200 * 4096) == b"more data"
    assert fam.is_ready(config_in, files_in) and not fam.has_saved(config_in)


def test_a_record_from_the_one_block_verify_is_still_put_back(config_in, files_in):
    """A verify of the previous dali, killed mid-write, left {"offset", "data"}: an upgrade
    must not lose those bytes."""
    make_state_dir(config_in)
    fam.ensure(config_in, files_in, files_in.virt)
    (config_in.state_dir / "fam-restore.json").write_text(
        json.dumps({"offset": 77 * 4096, "data": b"old record".hex()}))
    fam.ensure(config_in, files_in, files_in.virt)
    with open(config_in.fam_path, "rb") as f:
        assert os.pread(f.fileno(), 10, 77 * 4096) == b"old record"
    assert not fam.has_saved(config_in)


def test_preflight_refuses_a_dir_others_can_write(config_in):
    config_in.data_dir.mkdir()
    os.chmod(config_in.data_dir, 0o777)
    found = data_dir_problem(config_in)
    assert str(config_in.data_dir) in found and "go-w" in found
    os.chmod(config_in.data_dir, 0o1777)  # sticky is no help in the directory itself
    assert data_dir_problem(config_in)
    os.chmod(config_in.data_dir, 0o755)
    os.chown(config_in.data_dir, 65534, -1)  # owned by nobody
    assert "can be changed by users other than root" in data_dir_problem(config_in)


def test_preflight_accepts_a_sticky_dir_on_the_way(config_in):
    assert config_in.data_dir.parent.parent == Path("/var/tmp")  # 1777, like /tmp
    assert data_dir_problem(config_in) is None


def test_preflight_refuses_a_dir_of_another_cluster(config_in):
    other = settings.load(env={"DALI_DIR": str(config_in.data_dir), "DALI_TAG": "zt"},
                          repo=config_in.state_dir.parent.parent)
    fam.ensure(other, local_files(other), local_files(other).virt)  # zt's FAM, in the same directory
    found = data_dir_problem(config_in)
    assert "belongs to dali cluster 'zt'" in found and "its own dir" in found


def test_bytes_saved_from_another_fam_are_not_put_back(config_in, files_in):
    """The FAM moved away and made anew (or reconfigured) since the bytes were saved: they
    belong to the old one, and writing them into the new one would corrupt it."""
    make_state_dir(config_in)
    fam.ensure(config_in, files_in, files_in.virt)
    fam.save_before_write(config_in, files_in, {5 * 4096: b"old FAM's"}, until=0)
    config_in.fam_path.rename(config_in.data_dir / "FAM.kept")  # the user keeps the old one
    fam.ensure(config_in, files_in, files_in.virt)  # a new FAM
    with open(config_in.fam_path, "rb") as f:
        assert os.pread(f.fileno(), 9, 5 * 4096) == bytes(9), "the new FAM got the old one's bytes"
    assert not fam.has_saved(config_in)


def test_bytes_are_put_back_only_once_nothing_of_the_run_writes(config_in, files_in, monkeypatch):
    """A run that died with its guest programs still running: they are killed on every running
    node first; a node that cannot be asked (a silent agent) is waited out until the record's
    `until`, and only then are the bytes put back."""
    from types import SimpleNamespace
    make_state_dir(config_in)
    fam.ensure(config_in, files_in, files_in.virt)
    fam.save_before_write(config_in, files_in, {9 * 4096: b"user data"}, until=time.time() + 3,
                          writers="dali-test-writer[.]")
    files_in.write(config_in.fam_path, {9 * 4096: b"workload!"})
    silent = SimpleNamespace(name=lambda: "silent")

    class OneSilentNode:
        def domain(self, name):
            return silent if name == config_in.original_node.name else None

        def is_running(self, dom):
            return True

        def run(self, dom, argv, timeout=0):
            raise DaliError("the guest agent does not answer")
    start = time.monotonic()
    fam.restore_saved(config_in, files_in, OneSilentNode())
    assert time.monotonic() - start >= 2.5, "put back before the run's programs had to end"
    assert files_in.read(config_in.fam_path, 9 * 4096, 9) == b"user data"
