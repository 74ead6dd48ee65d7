"""The FAM, the file behind the shared NVDIMM (seed step 2), and what it says about the device.

Made once with fallocate, group libvirt-qemu, mode 0664 (qemu runs as libvirt-qemu and opens
it read-write; 0644 fails with "can't open backing store ... Permission denied"). An existing
FAM is never truncated or recreated: it holds the shared device's contents.

The namespace mode is read from the FAM itself, on the host, with no guest running. ndctl's
fsdax and devdax modes write an info block ("NVDIMM_PFN_INFO" or "NVDIMM_DAX_INFO") at offset
4 KiB of the namespace, which for QEMU's label-less NVDIMM is offset 4 KiB of the FAM. Its uuid
is the one `ndctl list` shows, and the device's size is the FAM's minus the block's data offset.
That is how dali knows, from facts alone, whether the original still has to be reconfigured and
what every node must see.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

from dali import marks
from dali.cluster import Cluster, uuid_text
from dali.errors import DaliError
from dali.pool import Pool
from dali.reporter import log
from dali.virt import Libvirt

GROUP = marks.QEMU_GROUP
MODE = 0o664

INFO_BLOCK_OFFSET = 4096
_SIGNATURES = {b"NVDIMM_PFN_INFO\0": "fsdax", b"NVDIMM_DAX_INFO\0": "devdax"}
# struct nd_pfn_sb (drivers/nvdimm/pfn.h), after the 16-byte signature:
# uuid[16], parent_uuid[16], flags le32, version_major le16, version_minor le16, dataoff le64,
# npfns le64, mode le32, start_pad le32, end_trunc le32, align le32
_PFN_SB = struct.Struct("<16s16s16sIHHQQIIII")


def is_ready(cluster: Cluster) -> bool:
    if has_saved(cluster):
        return False  # bytes to put back first
    try:
        st = cluster.fam_path.stat()
    except FileNotFoundError:
        return False
    return (st.st_size == cluster.fam_size and st.st_gid == marks.qemu_gid()
            and stat.S_IMODE(st.st_mode) == MODE)


def ensure(cluster: Cluster) -> None:
    fam = cluster.fam_path
    marks.make_dir(cluster.data_dir, cluster)
    if fam.is_symlink():
        raise DaliError(f"{fam} is a symlink: dali sets the group and mode of the FAM itself and "
                        "never of what a link points at; move the file itself there (mv)")
    if fam.exists():
        restore_saved(cluster)
        size = fam.stat().st_size
        if size != cluster.fam_size:
            raise DaliError(f"{fam} is {size} bytes but fam.size asks for {cluster.fam_size}: "
                            "dali never resizes a FAM (it holds the shared device's data); set "
                            "fam.size to its size, or move the file away to start afresh")
        # An existing FAM (ours, or the seed's hand-made one) gets the group and mode qemu
        # needs: through a descriptor of the file itself, so a link put there meanwhile is
        # never followed.
        fd = os.open(fam, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, -1, marks.qemu_gid())
            os.fchmod(fd, MODE)
        finally:
            os.close(fd)
        return
    allocate(cluster, fam, MODE, "fam.size / dir")
    log(f"created {fam}: {cluster.fam_size} bytes, group {GROUP}, mode {MODE:o}")


def allocate(cluster: Cluster, path: Path, mode: int, fix: str) -> None:
    """A file of fam.size bytes, allocated (fallocate: qemu never meets a full disk halfway),
    group libvirt-qemu and `mode`, marked ours. Made under a temporary name and renamed: an
    interrupted run leaves nothing half-made behind. The FAM, and --compare-disk's shared disk."""
    tmp = path.with_name(f".{path.name}.new")
    with open(tmp, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, cluster.fam_size)
        except OSError as e:
            tmp.unlink()
            raise DaliError(f"fallocate of {cluster.fam_size} bytes for {path} failed "
                            f"({e.strerror}): free space or set {fix}") from None
    marks.mark(tmp, cluster, also=(path,))
    os.chown(tmp, -1, marks.qemu_gid())
    os.chmod(tmp, mode)
    os.rename(tmp, path)  # never replaces: the callers get here only if path does not exist
    marks.mark(path, cluster)


def namespace(fam: Path) -> dict:
    """The namespace as the FAM file at `fam` holds it (a file of this machine: the golden
    copy, or the FAM of a local cluster)."""
    with open(fam, "rb") as f:
        f.seek(INFO_BLOCK_OFFSET)
        return namespace_in(f.read(_PFN_SB.size), os.fstat(f.fileno()).st_size)


def namespace_in(block: bytes, fam_size: int) -> dict:
    """The namespace an info block read at INFO_BLOCK_OFFSET says: mode fsdax/devdax with uuid,
    size and alignment as ndctl reports them in a guest, or mode raw when no info block is
    there (a new FAM)."""
    if len(block) < _PFN_SB.size or block[:16] not in _SIGNATURES:
        return {"mode": "raw", "size": fam_size, "data_offset": 0}
    (signature, uid, _parent, _flags, _major, _minor, dataoff, _npfns, _mode, start_pad,
     end_trunc, align) = _PFN_SB.unpack(block)
    return {"mode": _SIGNATURES[signature], "uuid": uuid_text(uid),
            "size": fam_size - dataoff - start_pad - end_trunc, "align": align,
            # Where the device's first byte lies in the FAM (dataoff counts from the padding).
            "data_offset": start_pad + dataoff}


# --- the FAM wherever it lives: a file here, or a volume of the remote host's pool -------------

def _pool(cluster: Cluster) -> Pool:
    return Pool(cluster, Libvirt.of(cluster))


def exists(cluster: Cluster) -> bool:
    if cluster.remote:
        return _pool(cluster).size(cluster.fam_path.name) is not None
    return cluster.fam_path.exists()


def read_at(cluster: Cluster, offset: int, length: int) -> bytes:
    if cluster.remote:
        return _pool(cluster).read(cluster.fam_path.name, offset, length)
    with open(cluster.fam_path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


def write_at(cluster: Cluster, pieces: dict[int, bytes]) -> None:
    """Overwrite bytes of the FAM in place, durably. The nodes map it shared: what is written
    here every node sees at once, running or not."""
    if cluster.remote:
        for offset, data in pieces.items():
            _pool(cluster).write(cluster.fam_path.name, offset, data)
        return
    with open(cluster.fam_path, "r+b") as f:
        for offset, data in pieces.items():
            os.pwrite(f.fileno(), data, offset)
        os.fsync(f.fileno())


def held(cluster: Cluster) -> dict:
    """The namespace the cluster's FAM holds now (mode raw if there is no FAM yet)."""
    if not exists(cluster):
        return {"mode": "raw", "size": cluster.fam_size, "data_offset": 0}
    return namespace_in(read_at(cluster, INFO_BLOCK_OFFSET, _PFN_SB.size), cluster.fam_size)


ZEROS = bytes(1 << 20)


def data_mib(cluster: Cluster, start: int) -> int:
    """How many MiB of the device (from `start` in the FAM) hold anything but zeros. On a
    remote host the FAM is read through libvirt, in one stream."""
    if cluster.remote:
        return _pool(cluster).nonzero_mib(cluster.fam_path.name, start)
    count, offset = 0, start
    while offset < cluster.fam_size:
        chunk = read_at(cluster, offset, min(len(ZEROS), cluster.fam_size - offset))
        if not chunk:
            break
        count += chunk != ZEROS[:len(chunk)]
        offset += len(chunk)
    return count


# --- bytes that must go back ----------------------------------------------------------------

def _saved(cluster: Cluster) -> Path:
    return cluster.state_dir / "fam-restore.json"


def save_before_write(cluster: Cluster, pieces: dict[int, bytes]) -> None:
    """Record bytes of the FAM that are about to be overwritten ({offset: bytes}), durably,
    before the writes: if the run dies before it puts them back, the next verify or doit does
    (restore_saved)."""
    record = _saved(cluster)
    tmp = record.with_name(record.name + ".new")
    with open(tmp, "w") as f:
        json.dump({"pieces": [[offset, data.hex()] for offset, data in pieces.items()]}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(record)


def forget_saved(cluster: Cluster) -> None:
    _saved(cluster).unlink(missing_ok=True)


def has_saved(cluster: Cluster) -> bool:
    return _saved(cluster).exists()


def restore_saved(cluster: Cluster) -> None:
    """Put back bytes a killed verify left overwritten. The nodes map the FAM shared, so a write
    to the file here is what every node sees at once, running or not."""
    record = _saved(cluster)
    if not record.exists():
        return
    saved = json.loads(record.read_text())
    # {"offset", "data"}: one block, as dali wrote the record before verify wrote on all nodes at once.
    pieces = saved["pieces"] if "pieces" in saved else [[saved["offset"], saved["data"]]]
    write_at(cluster, {offset: bytes.fromhex(data) for offset, data in pieces})
    record.unlink()
    log(f"{cluster.fam_path}: put back {len(pieces)} block(s) at offset(s) "
        f"{', '.join(str(offset) for offset, _ in pieces)} that a doit verify that did not finish "
        "had overwritten")
