"""`doit reset`: back to the state right after cloning, for a test that broke things.

reset:disks puts every node's disk back to the frozen state: a linked clone (and the original)
gets a new overlay on frozen.qcow2, a copy clone a new copy. reset:fam puts the FAM back to the
golden copy: the namespace the original made, and a device of zeros; the answer too when a test
leaves the shared device in a state no node can mount. Both need every node shut off, and say
what they discarded. Each half is a check (disks_ready, fam_ready) and a change (put_..._back):
`doit reset` makes both checks before either change, so a refusal leaves everything as it was.

The golden copy (FAM.golden) is the FAM's reserved area up to the device's data offset (ndctl's
info block and memory map) and nothing else, kept sparse: about 18 MiB on disk for a 1 GiB FAM.
Restoring it rewrites the FAM in place, so its inode, group, mode and dali's mark stay (and on a
remote host its volume, and so its place in every domain). The device's data is zeroed first,
then the reserved area written back: the FAM never changes size, so a reset killed halfway
leaves a FAM every run accepts, and `doit reset:fam` again finishes it. Where the filesystem
can (xfs, btrfs) the copies are reflinks, which cost nothing.

Everything goes through the cluster's Storage (dali/storage/): a file here, a volume there.
"""

from __future__ import annotations

from pathlib import Path

from dali import disks, fam
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt


def golden(cluster: Cluster) -> Path:
    return cluster.data_dir / "FAM.golden"


def golden_is_current(cluster: Cluster, files: Storage) -> bool:
    """FAM.golden is whole and holds the reserved area of the namespace the FAM holds now."""
    path = golden(cluster)
    if not files.complete(path) or files.size(path) != files.size(cluster.fam_path):
        return False
    mine = fam.namespace_in(files.read(path, fam.INFO_BLOCK_OFFSET, fam.INFO_BLOCK_SIZE), cluster.fam_size)
    return mine == fam.held(cluster, files)


def make_golden(cluster: Cluster, files: Storage) -> None:
    """FAM.golden: the FAM's reserved area (the namespace's info block and memory map), the rest
    a hole, made whole or not at all."""
    ns = fam.held(cluster, files)
    files.put_sparse(golden(cluster), cluster.fam_size, cluster.fam_path, ns["data_offset"])


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


def fam_ready(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """Refused unless the FAM can go back now: a golden copy of its namespace, no node on."""
    if not golden_is_current(cluster, files):
        raise DaliError(f"no golden copy of {cluster.fam_path}{files.where} for its namespace: run "
                        "doit first (it makes one once the original has set the device up)")
    everything_off(cluster, virt, cluster.fam_path)


def put_fam_back(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """The device's data zeroed, then the golden reserved area written back over the FAM's."""
    data_offset = fam.held(cluster, files)["data_offset"]
    written = files.nonzero_mib(cluster.fam_path, data_offset)
    files.zero(cluster.fam_path, data_offset)
    files.copy_head(golden(cluster), cluster.fam_path, data_offset)
    fam.forget_saved(cluster)  # nothing a killed verify overwrote matters any more
    log(f"{cluster.fam_path}{files.where}: back to the golden copy; discarded {written} MiB of data "
        "on the device")


def disks_ready(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """Refused unless every node's disk can be put back now: a frozen disk, every node's disk
    dali's, no node on, nothing of the user's built on a disk."""
    if not files.complete(cluster.frozen_disk):
        raise DaliError("no frozen disk to go back to: reset:disks is for a cluster with clones "
                        "(doit clone makes them)")
    for node in cluster.nodes:
        disk = cluster.disk(node)
        if files.have(disk):  # (one dali did not make is refused there)
            everything_off(cluster, virt, disk)
            nothing_built_on(f"{disk}{files.where}", [f"{p}{files.where}" for p in files.built_on(disk)[1]])


def put_disks_back(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    for node in cluster.nodes:
        disk = cluster.disk(node)
        if not files.have(disk):
            continue
        discarded = files.allocated(disk)
        # Deleted, then made again from the frozen one: a kill in between leaves no disk, which
        # the next doit makes anew.
        files.discard(disk)
        disks.create(cluster, files, node)
        log(f"{node.name}: disk back to the frozen state; discarded {discarded / 2**20:.1f} MiB")
