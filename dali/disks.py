"""The nodes' disks, and the frozen disk the clones start from, wherever the cluster's files
live (dali/storage/).

The original's disk is a qcow2 overlay on the image (built, or the user's own qcow2, which is
never written). Before the first clone, freeze() turns the shut-off original's disk into
frozen.qcow2 (read-only from then on) and gives the original a fresh overlay on it, so the
original keeps a disk of its own. A linked clone is an overlay on frozen.qcow2 (made in
milliseconds, whatever the disk's size); a copy clone is a full, independent qcow2 of it.

A file at one of our names that we did not make (the user's copy put back, a stranger's) is
never used, overwritten or deleted (Storage.have refuses it).
"""

from __future__ import annotations

from pathlib import Path

from dali.cluster import Cluster, Node
from dali.errors import DaliError
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt


def base_disk(cluster: Cluster, files: Storage) -> Path:
    """What the original's first disk is an overlay on: the built image or the user's own."""
    return cluster.image.path or files.image_dir / "base.qcow2"


def create(cluster: Cluster, files: Storage, node: Node) -> None:
    """The node's disk, unless it exists: an overlay on the image or the frozen disk (the
    original), or on / a copy of the frozen disk (a clone)."""
    disk = cluster.disk(node)
    if files.have(disk):
        return
    frozen = files.have(cluster.frozen_disk)
    if node.is_original:
        # Once frozen, the original's disk is an overlay on frozen.qcow2, also when a run was
        # killed between freezing and making that overlay: never a blank disk on the image.
        files.overlay(disk, cluster.frozen_disk if frozen else base_disk(cluster, files), cluster.image.disk_size)
    elif not frozen:
        raise DaliError(f"{cluster.frozen_disk}{files.where} is not there yet: run doit (freeze)")
    elif cluster.clone_mode == "linked":
        files.overlay(disk, cluster.frozen_disk, cluster.image.disk_size)
    else:
        files.copy(disk, cluster.frozen_disk)
    log(f"{node.name}: disk {disk}{files.where}" + ("" if node.is_original else f" ({cluster.clone_mode})"))


def exists(cluster: Cluster, files: Storage, node: Node) -> bool:
    return files.have(cluster.disk(node))


def is_frozen(cluster: Cluster, files: Storage) -> bool:
    """frozen.qcow2 is there, whole, and the original's disk is built on it."""
    original = cluster.disk(cluster.original_node)
    return (files.complete(cluster.frozen_disk) and files.have(original)
            and files.backing(original) == str(cluster.frozen_disk))


def freeze(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """Make frozen.qcow2 from the shut-off original's disk, and the original a new overlay on
    it; every step decided from what is there now, so a run killed anywhere is carried on."""
    node = cluster.original_node
    disk, frozen = cluster.disk(node), cluster.frozen_disk
    moved = files.complete(frozen) and not files.exists(disk)
    if not moved and not is_frozen(cluster, files):
        dom = virt.domain(node.name)
        if dom is not None and virt.is_running(dom):
            raise DaliError(f"{node.name} is running: the first clone needs the original shut off "
                            "(doit shutdown), so its disk can be frozen consistently")
        if not files.have(disk):
            raise DaliError(f"{disk}{files.where} is not there: run doit, which makes it")
        files.move(disk, frozen)  # also finishes a move a killed run began
        log(f"{node.name}: disk frozen as {frozen}{files.where}; clones start from it")
    create(cluster, files, node)
