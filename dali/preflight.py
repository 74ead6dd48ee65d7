"""Host checks that must pass before dali creates anything, each failure naming its fix; and,
as preflight is the root of the task graph and so the last task doit clean reaches, the sweep
of whatever of the cluster is left.

tasks/preflight.py runs them as the first task of the graph, so a host that cannot work never
gets half a cluster. They are cheap enough to repeat on every `doit`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

from dali import cleaning, disks, fam, marks
from dali import pool as pools
from dali.cluster import Cluster
from dali.domain import gdb_socket
from dali.errors import DaliError
from dali.marks import XATTR
from dali.virt import Libvirt

QEMU_USER = "libvirt-qemu"  # the user Debian's libvirt runs qemu as


def problem(cluster: Cluster, virt: Libvirt) -> str | None:
    """The first thing that stops dali on this host, as one line naming the fix; None if none.
    Checks stop at the first problem: a later one often follows from it (no libvirtd, no dir)."""
    try:
        virt.conn
        # A domain or network with one of our names that another cluster (or someone else)
        # made: refused before anything of ours exists, never adopted.
        virt.network(cluster.network.name)
        for node in cluster.nodes:
            virt.domain(node.name)
    except DaliError as e:
        return str(e)
    if cluster.remote:
        return remote_problem(cluster, virt)
    return data_dir_problem(cluster)


def remote_problem(cluster: Cluster, virt: Libvirt) -> str | None:
    """On a remote libvirt host: its pool for this cluster, if there is one, is ours and has
    room for the FAM (dali/pool.py). A pool not made yet is checked as it is made."""
    found = pools.Pool(cluster, virt)
    if not found.exists():
        return found.problem()
    try:
        if found.marker() is None and not found.is_empty():
            return (f"dir (DALI_DIR): storage pool {pools.name(cluster)} on {cluster.uri} has no marker of "
                    "this cluster: remove that pool (virsh pool-undefine), or pick another tag")
        if not fam.exists(cluster):
            free = found.available()
            if cluster.fam_size > free:
                return (f"fam.size: {cluster.fam_size} bytes do not fit in the {free} bytes free in "
                        f"{cluster.data_dir} on {cluster.uri}: lower fam.size, free space there, or set "
                        "dir (DALI_DIR) elsewhere")
    except DaliError as e:
        return str(e)
    return None


def make_state_dir(cluster: Cluster) -> None:
    """state/<tag>/ holds the cluster's private ssh key: root's only."""
    cluster.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cluster.state_dir, 0o700)


def has_state_dir(cluster: Cluster) -> bool:
    try:
        return stat.S_IMODE(cluster.state_dir.stat().st_mode) == 0o700
    except FileNotFoundError:
        return False


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def qemu_cannot_traverse(path: Path) -> Path | None:
    """The first directory on the way to `path` that the qemu user may not enter, if any."""
    try:
        user = pwd.getpwnam(QEMU_USER)
    except KeyError:
        return None  # no such user: libvirt is not Debian's; nothing we can check
    groups = set(os.getgrouplist(QEMU_USER, user.pw_gid))  # as the kernel will see them
    for d in [*reversed(path.parents), path]:
        if not d.exists():
            break
        st = d.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def writable_by_others(path: Path) -> Path | None:
    """The first directory on the way to `path` (path included, if it exists) that a user other
    than root could change: not owned by root, or writable by a group or by others. A sticky
    directory (like /tmp) is fine on the way, not as the data directory itself: there, another
    user could put a symlink at a name dali is about to use, and root would follow it."""
    me = os.geteuid()
    for d in [*reversed(path.parents), path]:
        if not d.exists():
            break
        st = d.lstat()
        if stat.S_ISLNK(st.st_mode):
            st = d.stat()
        shared = st.st_mode & (stat.S_IWOTH | (stat.S_IWGRP if st.st_gid != 0 else 0))
        sticky_on_the_way = st.st_mode & stat.S_ISVTX and d != path
        if st.st_uid not in (0, me) or (shared and not sticky_on_the_way):
            return d
    return None


def other_cluster_in(cluster: Cluster) -> str | None:
    """Another dali cluster that owns the data directory or a file in it, described for a
    message: two clusters never share a directory (nor base.qcow2, frozen.qcow2, the FAM)."""
    d = cluster.data_dir
    if not d.is_dir():
        return None
    for path in [d, *d.iterdir(), *(cluster.image_dir.iterdir() if cluster.image_dir.is_dir() else [])]:
        found = marks.owner_of(path)
        if found is not None and found.get("cluster") != cluster.id:
            return f"{path} belongs to {marks.describe(found)}"
    return None


def data_dir_problem(cluster: Cluster) -> str | None:
    d = cluster.data_dir
    setting = "dir (DALI_DIR)"
    base = _existing_ancestor(d)
    if not os.access(base, os.W_OK | os.X_OK):
        return (f"{setting}: cannot create or write {d} ({base} is not writable): "
                "pick a writable place or fix its permissions")
    shared = writable_by_others(d)
    if shared:
        return (f"{setting}: {shared} can be changed by users other than root, who could swap "
                f"dali's files under {d} for symlinks: chown root and chmod go-w {shared}, or "
                "pick another place")
    other = other_cluster_in(cluster)
    if other:
        return f"{setting}: {other}: give each cluster its own dir"
    blocked = qemu_cannot_traverse(d)
    if blocked:
        return (f"{setting}: {blocked} is not searchable by user {QEMU_USER}, so qemu could not "
                f"open the FAM and disks under {d}: chmod o+x {blocked}, or pick another place")
    if not cluster.fam_path.exists():
        return _filesystem_problem(base, setting) or _no_room_for_the_fam(cluster, base)
    return None


def _no_room_for_the_fam(cluster: Cluster, base: Path) -> str | None:
    """The FAM is allocated whole (fallocate): refused here, not by a failed fallocate after
    the network and the data directory were made."""
    fs = os.statvfs(base)
    free = fs.f_bavail * fs.f_frsize
    if cluster.fam_size > free:
        return (f"fam.size: {cluster.fam_size} bytes do not fit in the {free} bytes free where "
                f"the FAM goes ({base}): lower fam.size, free space, or set dir (DALI_DIR) elsewhere")
    return None


def _filesystem_problem(d: Path, setting: str) -> str | None:
    """The FAM is made with fallocate and every file we make carries an xattr: try both."""
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".dali-probe-") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, 1 << 20)
            except OSError as e:
                return (f"{setting}: fallocate fails on the filesystem of {d} ({e.strerror}), "
                        "so the FAM cannot be made there: pick a directory on ext4, xfs or btrfs")
            try:
                os.setxattr(f.name, XATTR, b"probe")
            except OSError as e:
                return (f"{setting}: the filesystem of {d} takes no user extended attributes "
                        f"({e.strerror}), which dali uses to mark its files: pick ext4, xfs or btrfs")
    except OSError as e:
        return f"{setting}: cannot write in {d} ({e.strerror}): fix its permissions"
    return None


# --- the end of doit clean ---------------------------------------------------------------------

def sweep(cluster: Cluster, virt: Libvirt, dryrun: bool) -> None:
    """preflight is the root of the graph, so `doit clean` reaches it last: remove whatever
    this cluster's mark is still on in the data directory (a pruned node's disk, an image file),
    the directories dali made once they are empty, and the cluster's state/ folder. On a
    remote host: every volume the cluster's pool lists as ours, then the pool itself."""
    if cluster.remote:
        pools.Pool(cluster, virt).remove(dryrun)
    else:
        _sweep_files(cluster, virt, dryrun)
    if cluster.state_dir.exists():
        if not dryrun:
            shutil.rmtree(cluster.state_dir)
        cleaning.said("state directory", cluster.state_dir, dryrun)


def _sweep_files(cluster: Cluster, virt: Libvirt, dryrun: bool) -> None:
    folders = [cluster.image_dir, cluster.kernel_dir, gdb_socket(cluster, "x").parent, cluster.data_dir]
    left = [p for d in folders if d.is_dir() for p in d.iterdir()
            if p.is_file() and marks.is_ours(p, cluster)]
    while left:  # a disk goes before the disk it is built on: repeat while one goes
        for path in left:
            disks.remove_file(cluster, virt, path, dryrun)
        if dryrun or all(p.exists() for p in left):
            break
        left = [p for p in left if p.exists()]
    for folder in folders:
        marks.remove_dir_if_ours(folder, cluster, dryrun)
