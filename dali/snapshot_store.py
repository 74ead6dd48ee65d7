"""Where the cluster's snapshots are kept and what each says of itself (docs/snapshots.md).

A snapshot is a folder of ours beside the FAM and the disks, DIR/snapshots/<NAME>/ (the same
filesystem: a copy there shares blocks where the filesystem can, and a rename is whole):

    snapshot.json   what it holds (below); written last, removed first: without it the folder
                    is not a snapshot but what a stopped one left, removed by the next doit
    FAM             the FAM's bytes, its holes and blocks of zeros left holes (or a reflink)
    <node>.qcow2    each node's disk, as a copy of the node's qcow2 (built on frozen.qcow2 as
                    the node's disk is)
    <node>.memory   each node that ran: its memory and device state, as libvirtd saves it

Every file is made by dali through the cluster's Storage (dali/storage/): marked, whole or not
at all. snapshot.json names the cluster (its id), every node with its definition's digest, its
disk's backing file, whether it ran; the FAM's size; your kernel's files; when it was taken and
how long the nodes were paused.

This module reads and lists what is kept, deletes a snapshot, and removes them all for
`doit clean`. Taking one and rolling back are dali/snapshot.py's.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import NamedTuple

from dali import cleaning
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.storage import Storage

META = "snapshot.json"
FORMAT = 1
FAM = "FAM"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """A snapshot's name: letters, digits, '.', '_' and '-', at most 64, not starting with '.'
    or '-' (a file name of its own everywhere, never an option or a hidden file)."""
    if not NAME.fullmatch(name):
        raise DaliError(f"{name!r} cannot name a snapshot: use letters, digits, '.', '_' and '-' "
                        "(at most 64, the first a letter or digit)")
    return name


def memory_file(folder: Path, node: str) -> Path:
    return folder / f"{node}.memory"


def disk_file(folder: Path, node: str) -> Path:
    return folder / f"{node}.qcow2"


class Snapshot(NamedTuple):
    name: str
    path: Path  # its folder
    meta: dict  # its snapshot.json

    @property
    def nodes(self) -> dict[str, dict]:
        return self.meta["nodes"]

    @property
    def running(self) -> list[str]:
        """The nodes whose memory it holds, which a rollback resumes."""
        return [n for n, facts in self.nodes.items() if facts.get("running")]

    @property
    def taken(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.meta["taken"]))

    def files(self) -> list[Path]:
        """Every file it holds."""
        return ([self.path / META, self.path / FAM]
                + [disk_file(self.path, n) for n in self.nodes]
                + [memory_file(self.path, n) for n in self.running])


def folder(files: Storage, name: str) -> Path:
    return files.snapshots_dir / check_name(name)


def is_whole(files: Storage, path: Path) -> bool:
    """Whether our folder holds a snapshot: its snapshot.json, which is written last."""
    return files.exists(path / META) and files.is_ours(path / META)


def read(cluster: Cluster, files: Storage, name: str) -> Snapshot | None:
    """The snapshot of that name, or None when there is none (or only what a stopped one left).
    One of another cluster (a folder copied from elsewhere) is refused in one line."""
    path = folder(files, name)
    if files.snapshot_problem() or path not in files.folders(files.snapshots_dir) or not is_whole(files, path):
        return None
    try:
        size = files.size(path / META) or 0
        meta = json.loads(files.read(path / META, 0, size))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else '?'}")
    except (OSError, ValueError) as e:
        raise DaliError(f"{path / META}{files.where} cannot be read ({e}): doit snapshot --delete {name} "
                        "removes that snapshot") from None
    if meta.get("cluster") != cluster.id:
        raise DaliError(f"snapshot {name} in {path}{files.where} was taken of another cluster (its tag "
                        f"{meta.get('tag')!r}, another checkout or data directory): dali rolls a cluster back "
                        "only to its own snapshots")
    return Snapshot(name, path, meta)


def find(cluster: Cluster, files: Storage, name: str) -> Snapshot:
    """The snapshot of that name, or one line saying there is none."""
    problem = files.snapshot_problem()
    if problem:
        raise DaliError(problem)
    found = read(cluster, files, name)
    if found is None:
        raise DaliError(f"no snapshot {name} of cluster {cluster.tag}: doit snapshots lists them")
    return found


def write(files: Storage, path: Path, meta: dict) -> None:
    """snapshot.json, written whole: from then on the folder is a snapshot."""
    files.put(path / META, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())


def kept(cluster: Cluster, files: Storage) -> tuple[list[Snapshot], list[Path], list[str]]:
    """(every snapshot, by name; the folders a stopped snapshot or delete left behind; one line
    for each that cannot be read)."""
    if files.snapshot_problem():
        return [], [], []
    whole, left, unreadable = [], [], []
    for path in files.folders(files.snapshots_dir):
        if not is_whole(files, path):
            left.append(path)
        elif not NAME.fullmatch(path.name):
            unreadable.append(f"{path}{files.where}: not a name dali gives a snapshot")
        else:
            try:
                whole.append(read(cluster, files, path.name))
            except DaliError as e:
                unreadable.append(str(e))
    return whole, left, unreadable


def size_of(files: Storage, snap: Snapshot) -> tuple[int, int]:
    """(bytes it takes on disk, bytes its files hold as files): holes and shared blocks make
    the first smaller."""
    there = [p for p in snap.files() if files.exists(p)]
    return sum(files.allocated(p) for p in there), sum(files.size(p) or 0 for p in there)


def mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 10 * 2**30 else f"{n / 2**20:.1f} MiB"


def listing(cluster: Cluster, files: Storage) -> str:
    """`doit snapshots`: one row per snapshot (when, which nodes ran, which were off, its size
    on disk), and a line for each folder a stopped doit left."""
    problem = files.snapshot_problem()
    if problem:
        raise DaliError(problem)
    snaps, left, unreadable = kept(cluster, files)
    lines = []
    if not snaps:
        lines.append(f"no snapshot of cluster {cluster.tag} (doit snapshot NAME takes one, kept in "
                     f"{files.snapshots_dir}{files.where})")
    else:
        rows = [["snapshot", "taken", "running", "shut off", "on disk", "as files"]]
        for s in snaps:
            on_disk, as_files = size_of(files, s)
            off = [n for n in s.nodes if n not in s.running]
            rows.append([s.name, s.taken, " ".join(s.running) or "-", " ".join(off) or "-",
                         mib(on_disk), mib(as_files)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"{p}{files.where}: what a stopped doit snapshot or delete left; the next doit that "
              "changes the cluster removes it" for p in left]
    lines += unreadable
    return "\n".join(lines)


def delete(cluster: Cluster, files: Storage, name: str) -> None:
    """`doit snapshot --delete NAME`: its snapshot.json first (from then on it is no snapshot),
    then its files, then its folder. Stopped halfway, the next doit removes the rest."""
    problem = files.snapshot_problem()
    if problem:
        raise DaliError(problem)
    path = folder(files, name)
    snap = read(cluster, files, name)
    if snap is None and path not in files.folders(files.snapshots_dir):
        raise DaliError(f"no snapshot {name} of cluster {cluster.tag}: doit snapshots lists them")
    freed = size_of(files, snap)[0] if snap is not None else 0
    if is_whole(files, path):
        files.discard(path / META)
    left = files.remove_folder(path)
    for line in left:
        log(f"left {line}")
    log(f"deleted snapshot {name}" + (f": {mib(freed)} freed" if snap is not None else
                                      " (what a stopped doit left of it)"))


def remove_leftovers(files: Storage) -> None:
    """The folders a stopped snapshot or delete left (no snapshot.json), removed."""
    for path in files.folders(files.snapshots_dir):
        if not is_whole(files, path):
            left = files.remove_folder(path)
            log(f"removed {path}{files.where}: what a stopped doit snapshot or delete left"
                + (f" (kept: {'; '.join(left)})" if left else ""))


def remove_all(cluster: Cluster, files: Storage, dryrun: bool = False) -> None:
    """`doit clean`: every snapshot, then the snapshots folder if dali made it; `-n` lists them."""
    if files.snapshot_problem():
        return
    said: set[str] = set()

    def keep(lines: list[str]) -> None:
        for line in lines:
            if line not in said:
                said.add(line)
                what, _, why = line.partition(": ")
                cleaning.kept(what, why, dryrun)

    for path in files.folders(files.snapshots_dir):
        left = files.remove_folder(path, dryrun)
        keep(left)
        if not left:
            cleaning.said("snapshot", str(path), dryrun)
    base = files.snapshots_dir
    if base in files.folders(base.parent):
        left = files.remove_folder(base, dryrun)
        keep(left)
        if not left:
            cleaning.said("directory", str(base), dryrun)
