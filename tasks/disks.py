"""Stage: the nodes' disks, and the frozen disk the clones start from.

The original's disk is a qcow2 overlay on the image (built, or the user's own qcow2, which is
never written). Before the first clone, `freeze` turns the shut-off original's disk into
frozen.qcow2 (read-only from then on) and gives the original a fresh overlay on it, so the
original keeps a disk of its own. A linked clone is an overlay on frozen.qcow2 (made in
milliseconds, whatever the disk's size); a copy clone is a full, independent qcow2 of it.
Every file made here carries dali's mark (tasks/owned.py), which clean checks before deleting.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tasks import errors, owned
from tasks.config import Cluster, Node
from tasks.errors import DaliError
from tasks.reporter import log
from tasks.virt import Libvirt


def _qemu_img(*args: str) -> None:
    run = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise DaliError(f"qemu-img {args[0]} failed: {run.stderr.strip()}")


def make_overlay(backing: Path, disk: Path, tag: str) -> None:
    """A qcow2 whose unwritten blocks come from `backing`; built under a temp name."""
    tmp = disk.with_name("." + disk.name + ".new")
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(tmp))
    owned.mark(tmp, tag)
    tmp.rename(disk)


def make_copy(source: Path, disk: Path, tag: str) -> None:
    """A standalone qcow2 holding the whole chain below `source`."""
    tmp = disk.with_name("." + disk.name + ".new")
    _qemu_img("convert", "-q", "-O", "qcow2", str(source), str(tmp))
    owned.mark(tmp, tag)
    tmp.rename(disk)


def original_backing(cluster: Cluster) -> Path:
    return cluster.image.path or cluster.image_dir / "base.qcow2"


def disk_tasks(cluster: Cluster, needs_image: list[str]):
    for node in cluster.nodes:
        disk = cluster.disk(node)

        def create(node=node, disk=disk):
            if node.is_original:
                make_overlay(original_backing(cluster), disk, cluster.tag)
            elif cluster.clone_mode == "linked":
                make_overlay(cluster.frozen_disk, disk, cluster.tag)
            else:
                make_copy(cluster.frozen_disk, disk, cluster.tag)
            log(f"{node.name}: disk {disk}" + ("" if node.is_original else f" ({cluster.clone_mode})"))

        yield {
            "name": node.name,
            "actions": [errors.action(create)],
            # Only existence counts: a node's disk holds its work and is never remade.
            "uptodate": [lambda disk=disk: disk.exists()],
            "task_dep": ["preflight", "fam"] + (needs_image if node.is_original else ["freeze"]),
            "clean": [errors.action(lambda disk=disk: owned.remove_if_ours(disk, cluster.tag, log))],
            "verbosity": 2,
        }


def freeze(cluster: Cluster, virt: Libvirt) -> None:
    """Make frozen.qcow2 from the original's disk; safe to repeat after an interruption."""
    node = cluster.original_node
    disk, frozen = cluster.disk(node), cluster.frozen_disk
    if not frozen.exists():
        dom = virt.domain(node.name)
        if dom is not None and virt.is_running(dom):
            raise DaliError(f"{node.name} is running: the first clone needs the original shut off "
                            "(doit shutdown), so its disk can be frozen consistently")
        if not owned.is_ours(disk, cluster.tag):
            raise DaliError(f"{disk} is not dali's: cannot freeze it for cloning")
        os.chmod(disk, 0o444)
        disk.rename(frozen)
        log(f"{node.name}: disk frozen as {frozen}; clones start from it")
    if not disk.exists():
        make_overlay(frozen, disk, cluster.tag)


def freeze_task(cluster: Cluster, virt: Libvirt) -> dict:
    return {
        "actions": [errors.action(lambda: freeze(cluster, virt))],
        "uptodate": [lambda: cluster.frozen_disk.exists() and cluster.disk(cluster.original_node).exists()],
        "task_dep": ["original"],
        "clean": [errors.action(lambda: owned.remove_if_ours(cluster.frozen_disk, cluster.tag, log))],
        "verbosity": 2,
    }
