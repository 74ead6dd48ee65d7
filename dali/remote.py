"""The cluster's files when its nodes run on a remote libvirt host: the same stages as on this
machine, each made as volumes of the cluster's storage pool (dali/pool.py).

                this machine (dali/fam.py, disks.py, ...)    a remote host (here)
  FAM           fallocate, group libvirt-qemu, mode 0664     a raw volume, allocation = capacity
  image         copied from state/cache/                      uploaded from state/cache/
  node disks    qemu-img create -b / convert                  qcow2 volumes, with a backingStore
  frozen disk   the original's renamed                        a copy of it, the original re-made on it
  identity      written in place                              uploaded
  marks         an xattr on each file                         the pool's marker volume

Only the FAM's uploads and downloads differ from a file's reads and writes in size: a few KiB
at the info block's offset, or the pages verify and torture write.
"""

from __future__ import annotations

from pathlib import Path

from dali import cleaning, fam, reset
from dali import pool as pools
from dali.cluster import Cluster, Node
from dali.errors import DaliError
from dali.image_builder import NODE_IMAGE_FILES, node_image
from dali.initramfs import build_init
from dali.reporter import log
from dali.virt import Libvirt

FAM = "FAM"
FROZEN = "frozen.qcow2"


def disk_name(cluster: Cluster, node: Node | str) -> str:
    return pools.volume_name(cluster, cluster.disk(node))


# --- the FAM ------------------------------------------------------------------------------------

def fam_is_ready(cluster: Cluster, virt: Libvirt) -> bool:
    return pools.Pool(cluster, virt).size(FAM) == cluster.fam_size


def ensure_fam(cluster: Cluster, virt: Libvirt) -> None:
    pool = pools.Pool(cluster, virt)
    pool.ensure()
    size = pool.size(FAM)
    if size is None:
        # mode 0660: qemu's user gets the file from libvirt itself (it labels a <memory
        # model='nvdimm'> source for the domain that uses it), so no group has to be set here.
        pool.create(FAM, cluster.fam_size, "raw", allocation=cluster.fam_size, mode="0660")
        log(f"created {cluster.fam_path} on {cluster.uri}: {cluster.fam_size} bytes, allocated")
    elif size != cluster.fam_size:
        raise DaliError(f"{cluster.fam_path} on {cluster.uri} is {size} bytes but fam.size asks for "
                        f"{cluster.fam_size}: dali never resizes a FAM (it holds the shared device's "
                        "data); set fam.size to its size, or move the file away to start afresh")


# --- the image ------------------------------------------------------------------------------------

def image_stamp(cluster: Cluster, virt: Libvirt) -> str | None:
    facts = pools.Pool(cluster, virt).facts("base.qcow2")
    return None if facts is None else facts.get("stamp")


def image_is_current(cluster: Cluster, virt: Libvirt, stamp: str) -> bool:
    pool = pools.Pool(cluster, virt)
    return all((pool.facts(n) or {}).get("stamp") == stamp for n in NODE_IMAGE_FILES)


def image_is_kept(cluster: Cluster, virt: Libvirt, stamp: str) -> bool:
    """Built from another recipe, but nodes are built on it: it stays (as dali/image.py)."""
    pool = pools.Pool(cluster, virt)
    old = image_stamp(cluster, virt)
    if old is None or old == stamp:
        return False
    base = str(cluster.image_dir / "base.qcow2")
    return any(pool.backing(v) == base for v in (disk_name(cluster, cluster.original_node), FROZEN))


def ensure_image(cluster: Cluster, virt: Libvirt, tarball: Path, stamp: str) -> None:
    if image_is_current(cluster, virt, stamp) or image_is_kept(cluster, virt, stamp):
        return
    cached = node_image(tarball, cluster.image.disk_size, build_init(cluster.cache_dir), log)
    pool = pools.Pool(cluster, virt)
    pool.ensure()
    for n in NODE_IMAGE_FILES:
        if (pool.facts(n) or {}).get("stamp") != stamp:
            size = (cached / n).stat().st_size
            log(f"uploading {n} ({size // 2**20} MiB) to {cluster.uri}")
            # The stamp goes into the marker once every byte is there: an upload cut short is
            # made again by the next doit.
            pool.upload(n, cached / n, stamp=stamp, features="identity-disk")
    log(f"node image ready: {cluster.image_dir / 'base.qcow2'} on {cluster.uri}")


def remove_image(cluster: Cluster, virt: Libvirt, dryrun: bool = False) -> None:
    for n in NODE_IMAGE_FILES:
        remove_volume(cluster, virt, cluster.image_dir / n, dryrun)


# --- node disks and the frozen disk ----------------------------------------------------------------

def disk_exists(cluster: Cluster, virt: Libvirt, node: Node) -> bool:
    return pools.Pool(cluster, virt).volume(disk_name(cluster, node)) is not None


def create_disk(cluster: Cluster, virt: Libvirt, node: Node) -> None:
    """As dali/disks.py create(): an overlay on the image or the frozen disk, or a copy."""
    pool = pools.Pool(cluster, virt)
    name = disk_name(cluster, node)
    if pool.volume(name) is not None:
        return
    frozen = pool.volume(FROZEN) is not None
    if not node.is_original and not frozen:
        raise DaliError(f"{cluster.frozen_disk} is not on {cluster.uri} yet: run doit (freeze)")
    if node.is_original or cluster.clone_mode == "linked":
        backing = cluster.frozen_disk if frozen else cluster.base_disk
        pool.create(name, cluster.image.disk_size, "qcow2", backing=backing)
    else:
        pool.copy(name, FROZEN)
    log(f"{node.name}: disk {cluster.disk(node)} on {cluster.uri}"
        + ("" if node.is_original else f" ({cluster.clone_mode})"))


def is_frozen(cluster: Cluster, virt: Libvirt) -> bool:
    pool = pools.Pool(cluster, virt)
    return (pool.volume(FROZEN) is not None
            and pool.backing(disk_name(cluster, cluster.original_node)) == str(cluster.frozen_disk))


def freeze(cluster: Cluster, virt: Libvirt) -> None:
    """frozen.qcow2, a copy of the shut-off original's disk, and the original's disk made
    again as an overlay on it. A volume cannot be renamed, so this copies where dali/disks.py
    renames; every step is decided from what the pool holds now:
      - frozen there, the original's disk built on it: done;
      - frozen there, the original's disk gone: the copy was complete (the disk is deleted
        only after it), so the overlay is made;
      - frozen there, the original's disk not built on it: a copy cut short, made again."""
    node = cluster.original_node
    pool = pools.Pool(cluster, virt)
    name = disk_name(cluster, node)
    has_disk = pool.volume(name) is not None
    if pool.volume(FROZEN) is not None:
        if not has_disk:
            create_disk(cluster, virt, node)
            return
        if pool.backing(name) == str(cluster.frozen_disk):
            return
        if any(pool.built_on(cluster.frozen_disk)):  # a clone, or a user's copy: it was complete
            raise DaliError(f"{cluster.frozen_disk} on {cluster.uri} has disks built on it, but "
                            f"{cluster.disk(node)} is not: move that disk away, then run doit again")
        pool.delete(FROZEN)  # a copy cut short: nothing can be built on it yet
    dom = virt.domain(node.name)
    if dom is not None and virt.is_running(dom):
        raise DaliError(f"{node.name} is running: the first clone needs the original shut off "
                        "(doit shutdown), so its disk can be frozen consistently")
    if not has_disk:
        raise DaliError(f"{cluster.disk(node)} is not on {cluster.uri}: run doit, which makes it")
    log(f"{node.name}: copying its disk to {cluster.frozen_disk} on {cluster.uri}")
    pool.copy(FROZEN, name)
    pool.delete(name, remade=True)
    create_disk(cluster, virt, node)
    log(f"{node.name}: disk frozen as {cluster.frozen_disk}; clones start from it")


def remove_volume(cluster: Cluster, virt: Libvirt, path: Path, dryrun: bool = False) -> None:
    """Clean's counterpart of dali/disks.py remove_file: our volume, unless something is built on it."""
    pool = pools.Pool(cluster, virt)
    if not pool.exists():
        return
    name = pools.volume_name(cluster, path)
    where = f"{path} on {cluster.uri}"
    try:
        vol = pool.volume(name)
    except DaliError:
        cleaning.kept(where, "dali did not make it for this cluster", dryrun)
        return
    if vol is not None:
        ours, theirs = pool.built_on(path)
        if theirs:
            cleaning.kept(where, f"{', '.join(theirs)} is built on it", dryrun)
            return
        if ours and not dryrun:
            return  # our disks on it go first; the pool's removal at the end takes it then
    pool.delete(name, dryrun)


# --- the golden copy and doit reset --------------------------------------------------------------

GOLDEN = "FAM.golden"


def golden_is_current(cluster: Cluster, virt: Libvirt) -> bool:
    """As dali/reset.py: FAM.golden holds the reserved area of the namespace the FAM holds now.
    `complete` is written once its last byte is there: a copy cut short is not current."""
    facts = pools.Pool(cluster, virt).facts(GOLDEN)
    held = fam.held(cluster)
    return bool(facts and facts.get("complete") and held["mode"] != "raw"
                and facts.get("uuid") == held.get("uuid"))


def make_golden(cluster: Cluster, virt: Libvirt) -> None:
    """FAM.golden: a sparse volume of the FAM's size holding the reserved area (ndctl's info
    block and memory map, ~18 MiB of a 1 GiB FAM), read from the FAM and written back."""
    pool = pools.Pool(cluster, virt)
    held = fam.held(cluster)
    pool.delete(GOLDEN)
    pool.create(GOLDEN, cluster.fam_size, "raw")
    _copy_start(pool, FAM, GOLDEN, held["data_offset"])
    pool.record(GOLDEN, complete=True, uuid=held.get("uuid"))


def _copy_start(pool: pools.Pool, source: str, target: str, length: int) -> None:
    """The first `length` bytes of one volume over those of another, 16 MiB at a time."""
    step = pools.CHUNK * 16
    for offset in range(0, length, step):
        pool.write(target, offset, pool.read(source, offset, min(step, length - offset)))


def fam_ready(cluster: Cluster, virt: Libvirt) -> None:
    """As dali/reset.py's: a golden copy of the FAM's namespace, no node on."""
    if not golden_is_current(cluster, virt):
        raise DaliError(f"no golden copy of {cluster.fam_path} for its namespace: run doit first "
                        "(it makes one once the original has set the device up)")
    reset.everything_off(cluster, virt, cluster.fam_path)


def put_fam_back(cluster: Cluster, virt: Libvirt) -> None:
    """The FAM wiped on the libvirt host (virStorageVolWipe: zeros, written there, not sent),
    then the golden reserved area written back: the FAM keeps its volume, and so its place in
    every domain. A run killed between the two leaves a raw FAM, which the next doit's original
    makes fsdax again: nothing of the device is kept either way, as asked."""
    pool = pools.Pool(cluster, virt)
    data_offset = fam.held(cluster)["data_offset"]
    pool.volume(FAM).wipe(0)
    _copy_start(pool, GOLDEN, FAM, data_offset)
    fam.forget_saved(cluster)
    log(f"{cluster.fam_path} on {cluster.uri}: back to the golden copy; the device's data is discarded")


def disks_ready(cluster: Cluster, virt: Libvirt) -> None:
    """As dali/reset.py's: a frozen disk, no node on, nothing of the user's built on a disk."""
    pool = pools.Pool(cluster, virt)
    if pool.volume(FROZEN) is None:
        raise DaliError("no frozen disk to go back to: reset:disks is for a cluster with clones "
                        "(doit clone makes them)")
    names = {node: disk_name(cluster, node) for node in cluster.nodes}
    for node, name in names.items():
        if pool.volume(name) is not None:
            reset.everything_off(cluster, virt, cluster.disk(node))
            reset.nothing_built_on(cluster.disk(node), [f"{cluster.data_dir / v} on {cluster.uri}"
                                                        for v in pool.built_on(cluster.disk(node))[1]])


def put_disks_back(cluster: Cluster, virt: Libvirt) -> None:
    pool = pools.Pool(cluster, virt)
    names = {node: disk_name(cluster, node) for node in cluster.nodes}
    for node, name in names.items():
        vol = pool.volume(name)
        if vol is None:
            continue
        discarded = vol.info()[2]
        # Deleted, then made again: a kill in between leaves no disk, which the next doit makes.
        pool.delete(name, remade=True)
        create_disk(cluster, virt, node)
        log(f"{node.name}: disk back to the frozen state; discarded {discarded / 2**20:.1f} MiB")
