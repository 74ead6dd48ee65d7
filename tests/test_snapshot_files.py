"""What a snapshot is made of, on real files of this machine, with no guest (docs/snapshots.md):
the copies (a reflink where the filesystem can, else holes and blocks of zeros kept, measured on
the disk), the FAM put back in place (its inode, mark and allocation kept), the folders (only
what dali made is removed), a pool refusing in one line; and libvirt's side as far as it can be
checked without a domain: the memory-only snapshot's XML against libvirt's own schema, a
definition's digest, and the header of a memory file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dali.errors import DaliError
from dali.storage.local import FICLONE, clone_or_sparse_copy, copy_in_place, data_ranges, sparse_copy
from dali.storage.pool import LibvirtPool
from dali.virt import Libvirt, definition_digest, memory_file_domain, memory_only_snapshot

MiB = 1 << 20


def on_disk(path) -> int:
    return os.stat(path).st_blocks * 512


def a_fam(files, size=64 * MiB, pieces=None):
    """The cluster's FAM made as dali makes it (allocated whole), with `pieces` written in it, and
    read once whole: every page in the page cache, as the qemus that map it leave it."""
    fam = files.cluster.fam_path
    files.allocate(fam, size, for_qemu=True)
    files.write(fam, pieces or {0: b"\x01" * 4096, 4096: b"NVDIMM_PFN_INFO\0", 20 * MiB: os.urandom(3 * MiB)})
    with open(fam, "rb") as f:
        while f.read(MiB):
            pass
    return fam


def test_a_fallocated_file_read_once_is_all_data_to_seek_data_on_ext4(files_in):
    """Why a sparse copy looks for zeros too: SEEK_DATA alone would copy the whole FAM."""
    fam = a_fam(files_in)
    fd = os.open(fam, os.O_RDONLY)
    try:
        ranges = list(data_ranges(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)
    assert sum(b - a for a, b in ranges) >= 4 * MiB  # at least what was written; all of it on ext4


def test_a_copy_keeps_the_holes_and_is_ours(files_in):
    fam = a_fam(files_in)
    target = files_in.snapshots_dir / "s" / "FAM"
    files_in.make_folder(target.parent)
    how = files_in.clone_file(fam, target)
    assert open(fam, "rb").read() == open(target, "rb").read()
    assert files_in.is_ours(target) and files_in.is_ours(target.parent) and files_in.is_ours(target.parent.parent)
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o640)
    if how == "sparse copy":  # ext4, as on this host: the 64 MiB FAM's 3 MiB and two blocks
        assert on_disk(target) <= 4 * MiB, on_disk(target)
    else:
        assert how == "reflink"
    assert not list(target.parent.glob(".*.new")), "made under a temporary name, renamed whole"


def test_a_sparse_copy_leaves_blocks_of_zeros_as_holes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as f:  # all of it data to SEEK_DATA: written, zeros and all
        f.write(os.urandom(100) + bytes(MiB - 100) + bytes(4 * MiB) + b"x" * 10 + bytes(128 << 10))
    with open(src, "rb") as s, open(dst, "wb") as d:
        sparse_copy(s.fileno(), d.fileno())  # what clone_or_sparse_copy does where no reflink is
    assert src.read_bytes() == dst.read_bytes()
    assert on_disk(dst) <= 256 << 10, "the 4 MiB of zeros, and the zeros after each write, are holes"


def test_the_fam_put_back_in_place_keeps_its_inode_mark_and_allocation(files_in):
    fam = a_fam(files_in)
    snap = files_in.snapshots_dir / "s" / "FAM"
    files_in.make_folder(snap.parent)
    files_in.clone_file(fam, snap)
    saved = open(fam, "rb").read()
    inode, mode, gid = os.stat(fam).st_ino, os.stat(fam).st_mode, os.stat(fam).st_gid
    # Afterwards: new data where the snapshot has a hole, and over its data; the info block zeroed.
    files_in.write(fam, {40 * MiB: os.urandom(2 * MiB), 20 * MiB + 5: b"later", 4096: bytes(16)})
    files_in.copy_into(snap, fam)
    assert open(fam, "rb").read() == saved
    st = os.stat(fam)
    assert (st.st_ino, st.st_mode, st.st_gid) == (inode, mode, gid)
    assert files_in.is_ours(fam) and files_in.qemu_may_use(fam)
    assert on_disk(fam) >= 64 * MiB, "allocated whole again: qemu never meets a full disk writing it"


def test_copy_in_place_is_run_again_after_a_kill(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(MiB) + bytes(2 * MiB) + os.urandom(MiB))
    dst.write_bytes(os.urandom(4 * MiB))
    with open(src, "rb") as s, open(dst, "r+b") as d:
        os.pwrite(d.fileno(), os.pread(s.fileno(), MiB, 0), 0)  # as far as a killed run got
        copy_in_place(s.fileno(), d.fileno())
        copy_in_place(s.fileno(), d.fileno())  # and once more: the same
    assert src.read_bytes() == dst.read_bytes()


def test_a_file_of_another_size_is_not_put_back(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(bytes(MiB))
    dst.write_bytes(bytes(2 * MiB))
    with open(src, "rb") as s, open(dst, "r+b") as d, pytest.raises(DaliError, match="cannot become"):
        copy_in_place(s.fileno(), d.fileno())
    assert dst.stat().st_size == 2 * MiB


def test_a_folder_is_removed_with_what_dali_made_in_it_and_never_a_users_file(files_in):
    fam = a_fam(files_in, size=4 * MiB, pieces={0: b"x"})
    folder = files_in.snapshots_dir / "s"
    files_in.make_folder(folder)
    files_in.clone_file(fam, folder / "FAM")
    (folder / "mine.txt").write_text("a user's notes")
    left = files_in.remove_folder(folder)
    assert left == [f"{folder / 'mine.txt'}: dali did not make it for this cluster"]
    assert not (folder / "FAM").exists() and (folder / "mine.txt").exists() and folder.is_dir()
    (folder / "mine.txt").unlink()
    assert files_in.remove_folder(files_in.snapshots_dir) == [] and not files_in.snapshots_dir.exists()


def test_a_copy_is_never_made_over_a_users_file_nor_from_one(files_in):
    fam = a_fam(files_in, size=4 * MiB, pieces={0: b"x"})
    folder = files_in.snapshots_dir / "s"
    files_in.make_folder(folder)
    (folder / "FAM").write_text("a user's")
    with pytest.raises(DaliError, match="dali did not make it"):
        files_in.clone_file(fam, folder / "FAM")
    assert (folder / "FAM").read_text() == "a user's"
    theirs = files_in.cluster.data_dir / "theirs"
    theirs.write_bytes(b"y")
    with pytest.raises(DaliError, match="not dali's"):
        files_in.clone_file(theirs, folder / "other")
    with pytest.raises(DaliError, match="not dali's"):
        files_in.copy_into(fam, theirs)
    assert theirs.read_bytes() == b"y"


def test_a_folder_made_by_someone_else_is_not_taken(files_in):
    folder = files_in.snapshots_dir / "s"
    folder.mkdir(parents=True)
    with pytest.raises(DaliError, match="dali did not make it"):
        files_in.make_folder(folder)
    assert files_in.folders(files_in.snapshots_dir) == []


def test_reflink_where_the_filesystem_can(tmp_path):
    """FICLONE is tried first; on this host's ext4 it is refused and the sparse copy follows."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"z" * MiB)
    with open(src, "rb") as s, open(dst, "wb") as d:
        how = clone_or_sparse_copy(s.fileno(), d.fileno())
    assert src.read_bytes() == dst.read_bytes()
    assert how in ("reflink", "sparse copy") and FICLONE == 0x40049409


def test_a_pool_refuses_snapshots_in_one_line(config_in):
    pool = LibvirtPool(config_in, Libvirt("test:///default", config_in.id))
    line = pool.snapshot_problem()
    assert line and "\n" not in line and "storage pool" in line
    assert pool.folders(pool.snapshots_dir) == []
    for call in (lambda: pool.make_folder(pool.snapshots_dir / "s"),
                 lambda: pool.clone_file(config_in.fam_path, pool.snapshots_dir / "s" / "FAM"),
                 lambda: pool.copy_into(pool.snapshots_dir / "s" / "FAM", config_in.fam_path),
                 lambda: pool.remove_folder(pool.snapshots_dir / "s"),
                 lambda: pool.save_memory(None, pool.snapshots_dir / "s" / "a.memory")):
        with pytest.raises(DaliError, match="storage pool"):
            call()


# --- libvirt's side, without a domain -------------------------------------------------------------

DOMAIN = """<domain type='kvm'><name>ivpa</name><devices>
  <disk type='file' device='disk'><source file='/d/ivpa.qcow2'/><target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='disk'><source file='/d/ivpa.identity'/><target dev='vdb' bus='virtio'/><readonly/></disk>
</devices><seclabel type='dynamic' model='apparmor' relabel='yes'/></domain>"""


def test_the_memory_only_snapshot_is_valid_to_libvirts_schema_and_leaves_every_disk_out(tmp_path):
    xml = memory_only_snapshot(DOMAIN, tmp_path / "ivpa.memory")
    path = tmp_path / "snapshot.xml"
    path.write_text(xml)
    check = subprocess.run(["virt-xml-validate", str(path), "domainsnapshot"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"file=\"{tmp_path / 'ivpa.memory'}\"" in xml and 'snapshot="external"' in xml
    assert "<name>dali-ivpa</name>" in xml
    assert xml.count('snapshot="no"') == 2, "every disk, the read-only ones too: libvirt adds those left out"


def test_a_definitions_digest_ignores_the_labels_libvirt_adds_and_nothing_else():
    plain = DOMAIN.replace("<seclabel type='dynamic' model='apparmor' relabel='yes'/>", "")
    assert definition_digest(DOMAIN) == definition_digest(plain)
    assert definition_digest(DOMAIN) == definition_digest(DOMAIN.replace("\n  ", "\n    "))
    assert definition_digest(DOMAIN) != definition_digest(DOMAIN.replace("ivpa.qcow2", "ivpb.qcow2"))


def save_image(path, name: str, magic: bytes = b"LibvirtQemudSave") -> None:
    """A file with libvirt's save image header, as qemu_saveimage.c writes it (the host's order)."""
    xml = f"<domain type='kvm'><name>{name}</name></domain>".encode() + b"\0"
    words = [2, len(xml), 1, 0, 0] + [0] * 14  # 19 words: the XML at byte 92, as libvirt 9.0 writes it
    path.write_bytes(magic + b"".join(w.to_bytes(4, sys.byteorder) for w in words) + xml + b"QEVM")


def test_a_memory_file_names_its_domain_once_whole(tmp_path):
    save_image(tmp_path / "whole", "ivpa")
    save_image(tmp_path / "partial", "ivpa", magic=b"LibvirtQemudPart")
    (tmp_path / "other").write_bytes(b"not a save image at all" * 10)
    assert memory_file_domain(tmp_path / "whole") == "ivpa"
    assert memory_file_domain(tmp_path / "partial") is None, "libvirt writes the whole magic last"
    assert memory_file_domain(tmp_path / "other") is None
    assert memory_file_domain(tmp_path / "missing") is None


def test_a_definition_and_its_live_disks_on_libvirts_test_driver(test_driver):
    dom = test_driver.conn.lookupByName("test")
    digest = test_driver.definition(dom)
    assert len(digest) == 64 and digest == test_driver.definition(dom)
    assert test_driver.live_only_disks(dom) == []


def test_a_clock_is_asked_again_while_the_agent_comes_back(test_driver):
    """A node just restored: libvirt may not see its agent for a moment; one that stays silent
    is given up on after `wait` seconds."""
    import libvirt

    class Restored:
        def __init__(self, silent_for: int):
            self.silent_for, self.asked = silent_for, []

        def setTime(self, time, flags):
            self.asked.append(time)
            if len(self.asked) <= self.silent_for:
                raise libvirt.libvirtError("Guest agent is not responding")
    dom = Restored(silent_for=2)
    test_driver.set_clock(dom)
    assert len(dom.asked) == 3 and dom.asked[-1]["seconds"] > 1_700_000_000
    with pytest.raises(libvirt.libvirtError):
        test_driver.set_clock(Restored(silent_for=1000), wait=0.3)
