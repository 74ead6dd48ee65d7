"""The nodes' disks, and the frozen disk the clones start from.

The original's disk is a qcow2 overlay on the image (built, or the user's own qcow2, which is
never written). Before the first clone, freeze() turns the shut-off original's disk into
frozen.qcow2 (read-only from then on) and gives the original a fresh overlay on it, so the
original keeps a disk of its own. A linked clone is an overlay on frozen.qcow2 (made in
milliseconds, whatever the disk's size); a copy clone is a full, independent qcow2 of it.

Every file made here carries dali's mark (dali/marks.py) and is readable by root and qemu's
group only: a disk holds the guest's ssh host keys. A file at one of our names that we did not
make (the user's copy put back, a stranger's) is never used, overwritten or deleted.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from dali import cleaning, marks
from dali.cluster import Cluster, Node
from dali.commands import run
from dali.errors import DaliError
from dali.reporter import log
from dali.virt import Libvirt


def _refuse_foreign(path: Path, cluster: Cluster) -> None:
    if os.path.lexists(path) and not marks.is_ours(path, cluster):
        raise DaliError(f"{path} exists but dali did not make it for this cluster (a copy, a "
                        "renamed file or someone else's): move it away, then run doit again")


def _make(disk: Path, cluster: Cluster, command: list[str], what: str, mode: int = 0o640) -> None:
    """Run a qemu-img command that writes `tmp`, then mark it and rename it to `disk`.
    The temporary name is fixed, so a run killed halfway leaves nothing the next one keeps."""
    tmp = disk.with_name("." + disk.name + ".new")
    tmp.unlink(missing_ok=True)
    run([part if part != "{tmp}" else str(tmp) for part in command], what=what)
    marks.make_file_private(tmp, mode)
    marks.mark(tmp, cluster, also=(disk,))
    tmp.rename(disk)
    marks.mark(disk, cluster)


def make_overlay(backing: Path, disk: Path, cluster: Cluster) -> None:
    """A qcow2 whose unwritten blocks come from `backing`."""
    _make(disk, cluster, ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing),
                          "{tmp}"], what=f"qemu-img create of {disk.name}")


def make_copy(source: Path, disk: Path, cluster: Cluster) -> None:
    """A standalone qcow2 holding the whole chain below `source`."""
    _make(disk, cluster, ["qemu-img", "convert", "-q", "-O", "qcow2", str(source), "{tmp}"],
          what=f"qemu-img convert to {disk.name}")


def create(cluster: Cluster, node: Node) -> None:
    """The node's disk, unless it exists: from the image or the frozen disk (the original), or
    from the frozen disk (a clone)."""
    disk = cluster.disk(node)
    _refuse_foreign(disk, cluster)
    if disk.exists():
        return
    if node.is_original:
        # Once frozen, the original's disk is an overlay on frozen.qcow2, also when a run was
        # killed between freezing and making that overlay: never a blank disk on the image.
        frozen = marks.is_ours(cluster.frozen_disk, cluster)
        make_overlay(cluster.frozen_disk if frozen else cluster.base_disk, disk, cluster)
    elif cluster.clone_mode == "linked":
        make_overlay(cluster.frozen_disk, disk, cluster)
    else:
        make_copy(cluster.frozen_disk, disk, cluster)
    log(f"{node.name}: disk {disk}" + ("" if node.is_original else f" ({cluster.clone_mode})"))


def is_frozen(cluster: Cluster) -> bool:
    return (marks.is_ours(cluster.frozen_disk, cluster)
            and marks.is_ours(cluster.disk(cluster.original_node), cluster))


def freeze(cluster: Cluster, virt: Libvirt) -> None:
    """Make frozen.qcow2 from the original's disk; safe to repeat after an interruption."""
    node = cluster.original_node
    disk, frozen = cluster.disk(node), cluster.frozen_disk
    _refuse_foreign(frozen, cluster)
    if not frozen.exists():
        dom = virt.domain(node.name)
        if dom is not None and virt.is_running(dom):
            raise DaliError(f"{node.name} is running: the first clone needs the original shut off "
                            "(doit shutdown), so its disk can be frozen consistently")
        if not marks.is_ours(disk, cluster):
            raise DaliError(f"{disk} is not dali's: cannot freeze it for cloning")
        os.chmod(disk, 0o440)
        marks.mark(disk, cluster, also=(frozen,))  # still ours if killed right after the rename
        disk.rename(frozen)
        log(f"{node.name}: disk frozen as {frozen}; clones start from it")
    marks.mark(frozen, cluster)
    create(cluster, node)


# --- what a qcow2 is built on ---------------------------------------------------------------

def backing_file(path: Path) -> str | None:
    """The backing file named in a qcow2 header (bytes 8-20: offset and length), or None."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != b"QFI\xfb":
                return None
            offset, length = struct.unpack(">QI", header[8:20])
            if not offset:
                return None
            f.seek(offset)
            return f.read(length).decode(errors="replace")
    except OSError:
        return None


def disks_built_on(path: Path, where: Path) -> list[Path]:
    """The qcow2 files in `where` whose backing file is `path`: a user's copy of a linked clone
    (cp ivpb.qcow2 keep.qcow2) needs frozen.qcow2 as much as the clone did."""
    if not where.is_dir():
        return []
    return sorted(p for p in where.iterdir()
                  if p.is_file() and p != path and backing_file(p) == str(path))


# --- deleting, only what nothing needs ----------------------------------------------------------

def remove_file(cluster: Cluster, virt: Libvirt, path: Path, dryrun: bool = False) -> None:
    """Delete a file dali made for this cluster, decided from facts checked now: a file of
    someone else's is left in place; a file a libvirt domain still names stops the clean (the
    domain should have gone first); a file another qcow2 beside it is built on is kept."""
    if not os.path.lexists(path):
        return
    if not marks.is_ours(path, cluster):
        cleaning.kept(path, "dali did not create it for this cluster", dryrun)
        return
    built_on_it = [p for d in (cluster.data_dir, cluster.image_dir) for p in disks_built_on(path, d)]
    theirs = [p for p in built_on_it if not marks.is_ours(p, cluster)]
    if theirs:
        cleaning.kept(path, f"{', '.join(map(str, theirs))} is built on it", dryrun)
        return
    if built_on_it and not dryrun:
        return  # our own disks on it go first; the sweep at the end of clean takes it then
    users = [] if dryrun else virt.domains_using(path)
    if users:
        raise DaliError(f"{path} is still used by domain {', '.join(users)}: undefine it first "
                        "(doit clean does that before it deletes disks), then run doit clean again")
    if not dryrun:
        path.unlink()
    cleaning.said("file", path, dryrun)

