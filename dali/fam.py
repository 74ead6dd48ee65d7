"""The FAM, the file behind the shared NVDIMM (seed step 2), and what it says about the device.

Made once, allocated whole, wherever the cluster's files live (dali/storage/): here with group
libvirt-qemu and mode 0664 (qemu runs as libvirt-qemu and opens it read-write; 0644 fails with
"can't open backing store ... Permission denied"). An existing FAM is never truncated or
recreated: it holds the shared device's contents.

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
import shlex
import struct
import time
from pathlib import Path

import libvirt

from dali.cluster import Cluster, uuid_text
from dali.errors import DaliError
from dali.fanout import each
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt

INFO_BLOCK_OFFSET = 4096
_SIGNATURES = {b"NVDIMM_PFN_INFO\0": "fsdax", b"NVDIMM_DAX_INFO\0": "devdax"}
# struct nd_pfn_sb (drivers/nvdimm/pfn.h), after the 16-byte signature:
# uuid[16], parent_uuid[16], flags le32, version_major le16, version_minor le16, dataoff le64,
# npfns le64, mode le32, start_pad le32, end_trunc le32, align le32
_PFN_SB = struct.Struct("<16s16s16sIHHQQIIII")
INFO_BLOCK_SIZE = _PFN_SB.size
# The whole block is 4 KiB, its last 8 bytes a checksum of the rest (struct nd_gen_sb).
INFO_BLOCK_BYTES = 4096
_UUID = slice(16, 32)
_CHECKSUM = slice(INFO_BLOCK_BYTES - 8, INFO_BLOCK_BYTES)


def is_ready(cluster: Cluster, files: Storage) -> bool:
    if has_saved(cluster):
        return False  # bytes to put back first
    fam = cluster.fam_path
    return files.size(fam) == cluster.fam_size and files.qemu_may_use(fam)


def ensure(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """The FAM, made once (allocated whole); an existing one (ours, or the seed's hand-made one:
    used, never deleted) gets what qemu needs, and the bytes a killed run left overwritten."""
    fam = cluster.fam_path
    files.prepare()
    if not files.exists(fam):
        files.allocate(fam, cluster.fam_size, for_qemu=True)
        log(f"created {fam}{files.where}: {cluster.fam_size} bytes, allocated")
    size = files.size(fam)
    if size != cluster.fam_size:
        raise DaliError(f"{fam}{files.where} is {size} bytes but fam.size asks for {cluster.fam_size}: "
                        "dali never resizes a FAM (it holds the shared device's data); set "
                        "fam.size to its size, or move the file away to start afresh")
    files.let_qemu_use(fam)
    restore_saved(cluster, files, virt)  # (into the FAM the bytes came from, and no other)


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


def checksum(block: bytes) -> int:
    """The kernel's nd_sb_checksum of a 4 KiB info block: Fletcher-64 over its little-endian
    32-bit words, the checksum's own 8 bytes counted as zeros (drivers/nvdimm/core.c). The
    kernel ignores a namespace whose block does not match (nd_pfn_validate)."""
    low = high = 0
    for (word,) in struct.iter_unpack("<I", block[:_CHECKSUM.start] + bytes(8)):
        low = (low + word) & 0xFFFFFFFF
        high = (high + low) & 0xFFFFFFFFFFFFFFFF
    return ((high << 32) | low) & 0xFFFFFFFFFFFFFFFF


def checksum_holds(block: bytes) -> bool:
    return len(block) == INFO_BLOCK_BYTES and struct.unpack("<Q", block[_CHECKSUM])[0] == checksum(block)


def with_uuid(block: bytes, uuid: bytes) -> bytes:
    """The same info block for a namespace of uuid `uuid`, its checksum made again: what ndctl
    writes for another namespace of the same size, mode and kernel (the layout is the same;
    ndctl gives each namespace a random uuid of its own)."""
    if not checksum_holds(block):
        raise DaliError("the info block to copy does not hold its own checksum: not a namespace ndctl made")
    new = bytearray(block)
    new[_UUID] = uuid
    new[_CHECKSUM] = struct.pack("<Q", checksum(bytes(new)))
    return bytes(new)


# --- the FAM as it is now, wherever it lives --------------------------------------------------

def held(cluster: Cluster, files: Storage) -> dict:
    """The namespace the cluster's FAM holds now (mode raw if there is no FAM yet)."""
    if not files.exists(cluster.fam_path):
        return {"mode": "raw", "size": cluster.fam_size, "data_offset": 0}
    return namespace_in(files.read(cluster.fam_path, INFO_BLOCK_OFFSET, _PFN_SB.size), cluster.fam_size)


# --- bytes that must go back ----------------------------------------------------------------
#
# verify and torture overwrite bytes of the device (a test block, a workload's area) and put them
# back at the end. They write down what they overwrite first, durably: a run that dies before it
# puts them back leaves the record, and the next doit, verify or torture puts them back. Two
# things must hold for that to be right:
#   - nothing of the dead run may still write: Ctrl-C ends dali at once, and a guest program it
#     started (a workload, a dd) goes on. The record names the latest moment one may still run
#     (`until`) and how to find them (`writers`: an extended regular expression over their
#     command lines, torture's run id among them): before that moment they are killed on every
#     running node (pkill -f), or, where that cannot be done (no pattern, a node whose agent is
#     silent), waited out;
#   - the FAM must be the one the bytes came from: a FAM moved away and made anew, or holding
#     another namespace, gets nothing (the record names the file and the namespace).

def _saved(cluster: Cluster) -> Path:
    return cluster.state_dir / "fam-restore.json"


def _identity(cluster: Cluster, files: Storage) -> str:
    return f"{files.identity(cluster.fam_path)} {held(cluster, files).get('uuid', 'raw')}"


def save_before_write(cluster: Cluster, files: Storage, pieces: dict[int, bytes], *, until: float,
                      writers: str = "") -> None:
    """Record bytes of the FAM that are about to be overwritten ({offset: bytes}), durably,
    before the writes; `until`: when the last guest program that may write them ends at the
    latest (time.time()); `writers`: those programs' command lines, as pkill -f finds them (an
    extended regular expression that does not match itself, as "[d]d" does not)."""
    record = _saved(cluster)
    tmp = record.with_name(record.name + ".new")
    with open(tmp, "w") as f:
        json.dump({"pieces": [[offset, data.hex()] for offset, data in pieces.items()],
                   "fam": _identity(cluster, files), "until": until, "writers": writers}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(record)


def forget_saved(cluster: Cluster) -> None:
    _saved(cluster).unlink(missing_ok=True)


def has_saved(cluster: Cluster) -> bool:
    return _saved(cluster).exists()


def restore_saved(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """Put back the bytes a run that did not finish left overwritten, once nothing of that run
    can write any more. The nodes map the FAM shared: a write to it is what every node sees at
    once, running or not."""
    record = _saved(cluster)
    if not record.exists():
        return
    saved = json.loads(record.read_text())
    if not files.exists(cluster.fam_path) or saved.get("fam") not in (None, _identity(cluster, files)):
        log(f"{record}: bytes saved from another FAM than {cluster.fam_path}{files.where} (moved away, "
            "made anew, or reconfigured since): not put back, and forgotten")
        record.unlink()
        return
    _stop_writers(cluster, virt, saved.get("writers", ""), saved.get("until", 0))
    # {"offset", "data"}: one block, as dali wrote the record before verify wrote on all nodes at once.
    pieces = saved["pieces"] if "pieces" in saved else [[saved["offset"], saved["data"]]]
    files.write(cluster.fam_path, {offset: bytes.fromhex(data) for offset, data in pieces})
    record.unlink()
    log(f"{cluster.fam_path}{files.where}: put back {len(pieces)} piece(s) at offset(s) "
        f"{', '.join(str(offset) for offset, _ in pieces[:8])}{' ...' if len(pieces) > 8 else ''} that "
        "a doit verify or torture that did not finish had overwritten")


def _stop_writers(cluster: Cluster, virt: Libvirt, writers: str, until: float) -> None:
    """Nothing of the run that saved the bytes writes after this returns: its programs killed on
    every running node, or, where that cannot be asked, the moment they end waited for."""
    if time.time() >= until:
        return
    running = [(n, d) for n, d in ((n, virt.domain(n.name)) for n in cluster.nodes)
               if d is not None and virt.is_running(d)]

    def stopped(node, dom) -> bool:
        if not writers:
            return False  # nothing to find them by
        try:
            # pkill exits 1 when it found nothing: both are fine; then wait until they are gone.
            q = shlex.quote(writers)
            return virt.run(dom, ["sh", "-c", f"pkill -KILL -f -- {q}; for i in $(seq 50); do "
                                              f"pgrep -f -- {q} >/dev/null || exit 0; sleep 0.1; done; exit 1"],
                            timeout=30).exitcode == 0
        except (DaliError, libvirt.libvirtError):
            return False  # a silent agent: nothing can be asked of the node
    unasked = [n.name for (n, _), ok in zip(running, each(running, stopped)) if not ok]
    if unasked and time.time() < until:
        log(f"{', '.join(unasked)}: a run that did not finish may still write on the shared device "
            f"until {time.strftime('%H:%M:%S', time.localtime(until))}; waiting, then putting its "
            "bytes back (or shut those nodes down and run again)")
        time.sleep(max(0.0, until - time.time()))
