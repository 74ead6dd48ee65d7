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

import grp
import os
import stat
import struct
import uuid
from pathlib import Path

from dali import marks
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log

GROUP = "libvirt-qemu"
MODE = 0o664

INFO_BLOCK_OFFSET = 4096
_SIGNATURES = {b"NVDIMM_PFN_INFO\0": "fsdax", b"NVDIMM_DAX_INFO\0": "devdax"}
# struct nd_pfn_sb (drivers/nvdimm/pfn.h), after the 16-byte signature:
# uuid[16], parent_uuid[16], flags le32, version_major le16, version_minor le16, dataoff le64,
# npfns le64, mode le32, start_pad le32, end_trunc le32, align le32
_PFN_SB = struct.Struct("<16s16s16sIHHQQIIII")


def _gid() -> int:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        raise DaliError(f"group {GROUP} does not exist: install libvirt-daemon-system (scripts/setup)") from None


def is_ready(cluster: Cluster) -> bool:
    try:
        st = cluster.fam_path.stat()
    except FileNotFoundError:
        return False
    return (st.st_size == cluster.fam_size and st.st_gid == _gid()
            and stat.S_IMODE(st.st_mode) == MODE)


def ensure(cluster: Cluster) -> None:
    fam = cluster.fam_path
    cluster.data_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    if fam.exists():
        size = fam.stat().st_size
        if size != cluster.fam_size:
            raise DaliError(f"{fam} is {size} bytes but fam.size asks for {cluster.fam_size}: "
                            "dali never resizes a FAM (it holds the shared device's data); set "
                            "fam.size to its size, or move the file away to start afresh")
        # An existing FAM (ours, or the seed's hand-made one) gets the group and mode qemu needs.
        os.chown(fam, -1, _gid())
        os.chmod(fam, MODE)
        return
    # Allocate under a temporary name: an interrupted run leaves no half-made FAM behind.
    tmp = fam.with_name(".FAM.new")
    with open(tmp, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, cluster.fam_size)
        except OSError as e:
            tmp.unlink()
            raise DaliError(f"fallocate of {cluster.fam_size} bytes for {fam} failed "
                            f"({e.strerror}): free space or set fam.size / dir") from None
    marks.mark(tmp, cluster.tag)
    os.chown(tmp, -1, _gid())
    os.chmod(tmp, MODE)
    os.rename(tmp, fam)  # never replaces: we only get here if FAM does not exist
    log(f"created {fam}: {cluster.fam_size} bytes, group {GROUP}, mode {MODE:o}")


def namespace(fam: Path) -> dict:
    """The namespace as the FAM holds it: mode fsdax/devdax with uuid, size and alignment as
    ndctl reports them in a guest, or mode raw when no info block is there (a new FAM)."""
    with open(fam, "rb") as f:
        f.seek(INFO_BLOCK_OFFSET)
        block = f.read(_PFN_SB.size)
        fam_size = os.fstat(f.fileno()).st_size
    if len(block) < _PFN_SB.size or block[:16] not in _SIGNATURES:
        return {"mode": "raw", "size": fam_size}
    (signature, uid, _parent, _flags, _major, _minor, dataoff, _npfns, _mode, start_pad,
     end_trunc, align) = _PFN_SB.unpack(block)
    return {"mode": _SIGNATURES[signature], "uuid": str(uuid.UUID(bytes=uid)),
            "size": fam_size - dataoff - start_pad - end_trunc, "align": align}
