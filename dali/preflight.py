"""Host checks that must pass before dali creates anything, each failure naming its fix.

tasks/preflight.py runs them as the first task of the graph, so a host that cannot work never
gets half a cluster. They are cheap enough to repeat on every `doit`.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tempfile
from pathlib import Path

from dali.cluster import Cluster
from dali.errors import DaliError
from dali.marks import XATTR
from dali.virt import Libvirt

QEMU_USER = "libvirt-qemu"  # the user Debian's libvirt runs qemu as


def problem(cluster: Cluster, virt: Libvirt) -> str | None:
    """The first thing that stops dali on this host, as one line naming the fix; None if none.
    Checks stop at the first problem: a later one often follows from it (no libvirtd, no dir)."""
    try:
        virt.conn
    except DaliError as e:
        return str(e)
    return data_dir_problem(cluster)


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
    groups = {g.gr_gid for g in grp.getgrall() if QEMU_USER in g.gr_mem} | {user.pw_gid}
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


def data_dir_problem(cluster: Cluster) -> str | None:
    d = cluster.data_dir
    setting = "dir (DALI_DIR)"
    if "," in str(d):
        # qemu's -object option syntax would split the FAM path at the comma
        return (f"{setting} = {d} contains a comma, which qemu's -object syntax cannot take: "
                "pick a path without one")
    base = _existing_ancestor(d)
    if not os.access(base, os.W_OK | os.X_OK):
        return (f"{setting}: cannot create or write {d} ({base} is not writable): "
                "pick a writable place or fix its permissions")
    blocked = qemu_cannot_traverse(d)
    if blocked:
        return (f"{setting}: {blocked} is not searchable by user {QEMU_USER}, so qemu could not "
                f"open the FAM and disks under {d}: chmod o+x {blocked}, or pick another place")
    if not cluster.fam_path.exists():
        return _filesystem_problem(base, setting)
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
