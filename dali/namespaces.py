"""A new FAM's namespace without booting the original: the bytes the checkout's last original
to make one left, for a FAM of the same size and mode on the same kernel
(device.namespace_from = "cache", the default).

Seed step 4 boots the original to run `ndctl create-namespace --reconfig ... --force` in it,
20-45 s under TCG (more for a checked node), for what ends as bytes at the head of the FAM:
ndctl's 4 KiB info block at offset 4 KiB and the memory map the kernel keeps after it, up to
the device's first byte (dali/fam.py). A cluster made again after `doit clean`, or a second
cluster of the checkout, would boot its original to get the same bytes again. So an original
that made a namespace leaves a copy of that head in state/cache/namespaces/ (sparse: a few
MiB on disk for a 1 GiB FAM), named by all that decides it: device.mode, fam.size and the
kernel the original booted (the node image's name for the image's kernel, the version string
built into your bzImage for yours, so your rebuilt kernel makes its own). A new FAM, or one
still raw, gets that head written in, byte for byte, with a uuid of its own and the info
block's checksum made again (what ndctl would have written for another namespace: each has a
random uuid), and the original need not boot: original:boot, :reconfigure and :shutdown find the
FAM prepared. The kernel checks the block when a node boots; `doit verify` checks every node
sees the FAM's namespace.

Only where the original would have made the namespace: a raw FAM and a device.mode that asks
for one, and no node running on it (an original a killed run left booting is the original's
path's to finish: its ndctl makes the namespace). A FAM that holds a namespace is never written
here, and a raw FAM's head was about to be ndctl's anyway. The head is written first without
its info block, then the block: a run killed in between leaves a FAM still raw, which the next
run writes again.

device.namespace_from = "original" makes the original boot and make it, as the seed does, every
time (your kernel's ndctl on your kernel's first cluster does that anyway, as there is nothing
cached for it yet). The cache is the checkout's: state/cache/ can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dali import fam
from dali.cluster import Cluster, uuid_text
from dali.image import stamp, wanted_tarball
from dali.initramfs import kernel_version
from dali.reporter import log
from dali.scratch import remove_abandoned_work, remove_tree, work_dir
from dali.storage import Storage
from dali.virt import Libvirt

_BLOCK = 4096


def _kernel(cluster: Cluster) -> str | None:
    """What names the kernel the original boots; None for a user's own disk booting its own
    (image.path without kernel.path), whose kernel dali does not know."""
    if cluster.own_kernel is not None:
        try:
            version = kernel_version(cluster.own_kernel.bzimage)
        except OSError:
            return None  # gone since the settings were read: the kernel stage says so in one line
        return "kernel-" + hashlib.sha256(version.encode()).hexdigest()[:16]
    if cluster.image.path:
        return None
    return stamp(cluster, wanted_tarball(cluster))  # image-<hash>: one node image, one kernel


def cached_head(cluster: Cluster) -> Path | None:
    """Where the head of this cluster's namespace is kept (whether or not it is there yet)."""
    if cluster.device_mode == "raw":
        return None
    kernel = _kernel(cluster)
    if kernel is None:
        return None
    return cluster.cache_dir / "namespaces" / kernel / f"{cluster.device_mode}-{cluster.fam_size}.head"


def _whole(head: Path) -> bool:
    """The kept head holds an info block whose checksum holds, and reaches the device's first
    byte that block names: a head cut short or changed by hand is passed over (the original
    makes the namespace, and keeps its own in its place)."""
    with open(head, "rb") as f:
        block = os.pread(f.fileno(), fam.INFO_BLOCK_BYTES, fam.INFO_BLOCK_OFFSET)
        size = os.fstat(f.fileno()).st_size
    if not fam.checksum_holds(block):
        return False
    ns = fam.namespace_in(block[:fam.INFO_BLOCK_SIZE], 0)
    return ns.get("data_offset") == size


# --- giving a new FAM its namespace -----------------------------------------------------------

def _to_give(cluster: Cluster, files: Storage, virt: Libvirt) -> Path | None:
    """The head to write into the FAM, if the original would otherwise boot to make it."""
    if cluster.namespace_from != "cache" or not files.exists(cluster.fam_path):
        return None
    if fam.held(cluster, files)["mode"] != "raw":
        return None  # a namespace already (the original's check refuses one of another mode)
    head = cached_head(cluster)
    if head is None or not head.is_file() or not _whole(head):
        return None
    if any(virt.is_active(name) for name in virt.domains_using(cluster.fam_path)):
        # A node runs on the raw FAM (an original a killed run left booting, one the user
        # started): nothing is written under its kernel; original:boot finds it running and
        # its ndctl makes the namespace, as without the cache.
        return None
    return head


def nothing_to_give(cluster: Cluster, files: Storage, virt: Libvirt) -> bool:
    return _to_give(cluster, files, virt) is None


def give(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """The cached head written over the FAM's, the info block last, with a uuid of its own."""
    head_path = _to_give(cluster, files, virt)
    if head_path is None:
        return
    head = head_path.read_bytes()
    at = fam.INFO_BLOCK_OFFSET
    uuid = bytearray(os.urandom(16))
    uuid[6], uuid[8] = (uuid[6] & 0x0F) | 0x40, (uuid[8] & 0x3F) | 0x80  # random, as ndctl's
    block = fam.with_uuid(head[at:at + fam.INFO_BLOCK_BYTES], bytes(uuid))
    files.write(cluster.fam_path, {0: head[:at] + bytes(fam.INFO_BLOCK_BYTES) + head[at + fam.INFO_BLOCK_BYTES:]})
    files.write(cluster.fam_path, {at: block})
    ns = fam.held(cluster, files)
    log(f"{cluster.fam_path}{files.where}: the {ns['mode']} namespace this checkout's original made for "
        f"a FAM of this size on this kernel, written in ({head_path.parent.name}; uuid {uuid_text(bytes(uuid))}): "
        "the original need not boot")


# --- keeping what an original made ----------------------------------------------------------------

def keep(cluster: Cluster, files: Storage) -> None:
    """The FAM's head as the original's ndctl just left it, kept for the next FAM of the same
    size, mode and kernel. Made in a work directory and renamed into place: two clusters keeping
    the same one at once each put a whole file there."""
    path = cached_head(cluster)
    ns = fam.held(cluster, files)
    if path is None or ns["mode"] != cluster.device_mode:
        return
    head = files.read(cluster.fam_path, 0, ns["data_offset"])
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_work(path.parent)
    work = work_dir(path.parent)
    try:
        with open(work / path.name, "wb") as f:
            for offset in range(0, len(head), _BLOCK):  # sparse: only the blocks that hold data
                piece = head[offset:offset + _BLOCK]
                if piece.count(0) != len(piece):
                    f.seek(offset)
                    f.write(piece)
            f.truncate(len(head))
            os.fsync(f.fileno())
        os.replace(work / path.name, path)
    finally:
        remove_tree(work)
    log(f"kept {cluster.device_mode} namespace of {cluster.fam_size} bytes for the next FAM like it: {path}")
