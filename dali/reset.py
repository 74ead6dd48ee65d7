"""`doit reset`: back to the state right after cloning, for a test that broke things.

reset:disks puts every node's disk back to the frozen state: a linked clone (and the original)
gets a new overlay on frozen.qcow2, a copy clone a new copy. reset:fam puts the FAM back to the
golden copy: the namespace the original made, and a device of zeros; the answer too when a test
leaves the shared device in a state no node can mount. Both need every node shut off, and say
what they discarded. Each half is a check (disks_ready, fam_ready) and a change (put_..._back):
`doit reset` makes both checks before either change, so a refusal leaves everything as it was.

The golden copy (FAM.golden) is the FAM's reserved area up to the device's data offset (ndctl's
info block and memory map) and nothing else, kept sparse: about 18 MiB on disk for a 1 GiB FAM.
Restoring it rewrites the FAM in place, so its inode, group, mode and dali's mark stay. Where
the filesystem can (xfs, btrfs) the copy is a reflink, which costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from dali import disks, fam, marks
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.virt import Libvirt



def golden(cluster: Cluster) -> Path:
    return cluster.data_dir / "FAM.golden"


def golden_is_current(cluster: Cluster, virt: Libvirt | None = None) -> bool:
    path = golden(cluster)
    return (marks.is_ours(path, cluster) and cluster.fam_path.exists()
            and path.stat().st_size == cluster.fam_path.stat().st_size
            and fam.namespace(path) == fam.namespace(cluster.fam_path))


def make_golden(cluster: Cluster, virt: Libvirt | None = None) -> None:
    """FAM.golden: the FAM's reserved area (the namespace's info block and memory map), the
    rest a hole. Built under a temporary name, then renamed."""
    ns = fam.namespace(cluster.fam_path)
    partial = cluster.data_dir / ".FAM.golden.new"
    with open(cluster.fam_path, "rb") as src, open(partial, "wb") as dst:
        dst.truncate(os.fstat(src.fileno()).st_size)
        _copy_range(src.fileno(), dst.fileno(), 0, ns["data_offset"])
        os.fsync(dst.fileno())
    marks.make_file_private(partial, 0o640)
    marks.mark(partial, cluster, also=(golden(cluster),))
    os.replace(partial, golden(cluster))
    marks.mark(golden(cluster), cluster)


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    at = start
    while at < end:
        n = os.copy_file_range(src, dst, end - at, at, at)  # a reflink where the filesystem can
        if n == 0:
            break
        at += n


def everything_off(cluster: Cluster, virt: Libvirt, path: Path) -> None:
    """Refused while a node that uses `path` (a file here, or a volume's path on a remote
    host: the domains name it either way) runs."""
    running = [name for name in virt.domains_using(path) if virt.is_active(name)]
    if running:
        raise DaliError(f"{', '.join(running)} still running with {path}: doit shutdown first "
                        "(a reset rewrites what a running node has open)")


def nothing_built_on(disk: Path | str, built_on_it: list) -> None:
    """Refused if a file (a user's: dali builds nothing on a node's disk) is built on a node's
    disk: a reset replaces that disk, and the file would read another disk under its data."""
    if built_on_it:
        raise DaliError(f"{', '.join(map(str, built_on_it))} is built on {disk}, which reset:disks "
                        "would replace: make it stand alone (qemu-img convert -O qcow2 FILE NEW) or "
                        "delete it, then run doit reset again")


def fam_ready(cluster: Cluster, virt: Libvirt) -> None:
    """Refused unless the FAM can be put back now: a golden copy of its namespace, no node on."""
    if not golden_is_current(cluster, virt):
        raise DaliError(f"no golden copy of {cluster.fam_path} for its namespace: run doit first "
                        "(it makes one once the original has set the device up)")
    everything_off(cluster, virt, cluster.fam_path)


def put_fam_back(cluster: Cluster, virt: Libvirt) -> None:
    ns = fam.namespace(cluster.fam_path)
    written = fam.data_mib(cluster, ns["data_offset"])
    size = cluster.fam_path.stat().st_size
    with open(golden(cluster), "rb") as src, open(cluster.fam_path, "r+b") as dst:
        # In place: drop every block, copy the golden's data back, allocate the rest again.
        os.ftruncate(dst.fileno(), 0)
        os.ftruncate(dst.fileno(), size)
        _copy_range(src.fileno(), dst.fileno(), 0, ns["data_offset"])
        os.posix_fallocate(dst.fileno(), 0, size)
        os.fsync(dst.fileno())
    fam.forget_saved(cluster)  # nothing a killed verify overwrote matters any more
    log(f"{cluster.fam_path}: back to the golden copy; discarded {written} MiB of data on the device")


def disks_ready(cluster: Cluster, virt: Libvirt) -> None:
    """Refused unless every node's disk can be put back now: a frozen disk, every node's disk
    dali's, no node on, nothing of the user's built on a disk."""
    if not marks.is_ours(cluster.frozen_disk, cluster):
        raise DaliError("no frozen disk to go back to: reset:disks is for a cluster with clones "
                        "(doit clone makes them)")
    for node in cluster.nodes:
        disk = cluster.disk(node)
        if not disk.exists():
            continue
        if not marks.is_ours(disk, cluster):
            raise DaliError(f"{disk} is not dali's: reset leaves it, and stops here")
        everything_off(cluster, virt, disk)
        nothing_built_on(disk, [p for d in (cluster.data_dir, cluster.image_dir)
                                for p in disks.disks_built_on(disk, d)])


def put_disks_back(cluster: Cluster, virt: Libvirt) -> None:
    for node in cluster.nodes:
        disk = cluster.disk(node)
        if not disk.exists():
            continue
        discarded = disk.stat().st_blocks * 512
        # disks.create() makes the disk from the frozen one; it never overwrites a disk, so the
        # old one goes first. A kill in between leaves no disk, which the next doit makes anew.
        disk.unlink()
        disks.create(cluster, node)
        log(f"{node.name}: disk back to the frozen state; discarded {discarded / 2**20:.1f} MiB")
