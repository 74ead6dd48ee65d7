"""The nodes' disks, and the frozen disk the clones start from.

The original's disk is a qcow2 overlay on the image (built, or the user's own qcow2, which is
never written). Before the first clone, freeze() turns the shut-off original's disk into
frozen.qcow2 (read-only from then on) and gives the original a fresh overlay on it, so the
original keeps a disk of its own. A linked clone is an overlay on frozen.qcow2 (made in
milliseconds, whatever the disk's size); a copy clone is a full, independent qcow2 of it.
Every file made here carries dali's mark (dali/marks.py), which clean checks before deleting.
"""

from __future__ import annotations

import os
from pathlib import Path

from dali import marks
from dali.cluster import Cluster, Node
from dali.commands import run
from dali.errors import DaliError
from dali.reporter import log
from dali.virt import Libvirt


def make_overlay(backing: Path, disk: Path, tag: str) -> None:
    """A qcow2 whose unwritten blocks come from `backing`; built under a temp name."""
    tmp = disk.with_name("." + disk.name + ".new")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(tmp)],
        what=f"qemu-img create of {disk.name}")
    marks.mark(tmp, tag)
    tmp.rename(disk)


def make_copy(source: Path, disk: Path, tag: str) -> None:
    """A standalone qcow2 holding the whole chain below `source`."""
    tmp = disk.with_name("." + disk.name + ".new")
    run(["qemu-img", "convert", "-q", "-O", "qcow2", str(source), str(tmp)],
        what=f"qemu-img convert to {disk.name}")
    marks.mark(tmp, tag)
    tmp.rename(disk)


def create(cluster: Cluster, node: Node) -> None:
    """The node's disk, from the image (the original) or the frozen disk (a clone)."""
    disk = cluster.disk(node)
    if node.is_original:
        make_overlay(cluster.base_disk, disk, cluster.tag)
    elif cluster.clone_mode == "linked":
        make_overlay(cluster.frozen_disk, disk, cluster.tag)
    else:
        make_copy(cluster.frozen_disk, disk, cluster.tag)
    log(f"{node.name}: disk {disk}" + ("" if node.is_original else f" ({cluster.clone_mode})"))


def is_frozen(cluster: Cluster) -> bool:
    return cluster.frozen_disk.exists() and cluster.disk(cluster.original_node).exists()


def freeze(cluster: Cluster, virt: Libvirt) -> None:
    """Make frozen.qcow2 from the original's disk; safe to repeat after an interruption."""
    node = cluster.original_node
    disk, frozen = cluster.disk(node), cluster.frozen_disk
    if not frozen.exists():
        dom = virt.domain(node.name)
        if dom is not None and virt.is_running(dom):
            raise DaliError(f"{node.name} is running: the first clone needs the original shut off "
                            "(doit shutdown), so its disk can be frozen consistently")
        if not marks.is_ours(disk, cluster.tag):
            raise DaliError(f"{disk} is not dali's: cannot freeze it for cloning")
        os.chmod(disk, 0o444)
        disk.rename(frozen)
        log(f"{node.name}: disk frozen as {frozen}; clones start from it")
    if not disk.exists():
        make_overlay(frozen, disk, cluster.tag)
