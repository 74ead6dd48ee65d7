"""Host checks that must pass before dali creates anything, each failure naming its fix.

Runs as the first task of the graph (every other task depends on it), so a host that cannot
work never gets half a cluster. The checks are cheap enough to repeat on every `doit`.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

from tasks import errors, owned
from tasks.config import Cluster
from tasks.errors import DaliError
from tasks.owned import XATTR
from tasks.reporter import log
from tasks.virt import Libvirt

QEMU_USER = "libvirt-qemu"  # the user Debian's libvirt runs qemu as


def problems(cluster: Cluster, virt: Libvirt) -> list[str]:
    found = []
    try:
        virt.conn
    except DaliError as e:
        found.append(str(e))
    found += _data_dir_problems(cluster)
    return found


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


def _data_dir_problems(cluster: Cluster) -> list[str]:
    d = cluster.data_dir
    setting = "dir (DALI_DIR)"
    if "," in str(d):
        # qemu's -object option syntax would split the FAM path at the comma
        return [f"{setting} = {d} contains a comma, which qemu's -object syntax cannot take: "
                "pick a path without one"]
    base = _existing_ancestor(d)
    if not os.access(base, os.W_OK | os.X_OK):
        return [f"{setting}: cannot create or write {d} ({base} is not writable): "
                "pick a writable place or fix its permissions"]
    blocked = qemu_cannot_traverse(d)
    if blocked:
        return [f"{setting}: {blocked} is not searchable by user {QEMU_USER}, so qemu could not "
                f"open the FAM and disks under {d}: chmod o+x {blocked}, or pick another place"]
    if not cluster.fam_path.exists():
        return _filesystem_problems(base, setting)
    return []


def _filesystem_problems(d: Path, setting: str) -> list[str]:
    """The FAM is made with fallocate and every file we make carries an xattr: try both."""
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".dali-probe-") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, 1 << 20)
            except OSError as e:
                return [f"{setting}: fallocate fails on the filesystem of {d} ({e.strerror}), "
                        "so the FAM cannot be made there: pick a directory on ext4, xfs or btrfs"]
            try:
                os.setxattr(f.name, XATTR, b"probe")
            except OSError as e:
                return [f"{setting}: the filesystem of {d} takes no user extended attributes "
                        f"({e.strerror}), which dali uses to mark its files: pick ext4, xfs or btrfs"]
    except OSError as e:
        return [f"{setting}: cannot write in {d} ({e.strerror}): fix its permissions"]
    return []


def task(cluster: Cluster, virt: Libvirt) -> dict:
    @errors.action
    def check():
        found = problems(cluster, virt)
        if found:
            raise DaliError(found[0])

    def sweep():
        """preflight is the root of the graph, so `doit clean` reaches it last: remove whatever
        dali-marked file is left in the data directory (a frozen disk, a pruned node's disk),
        the directory if that empties it, and the cluster's state/ folder."""
        if cluster.data_dir.is_dir():
            for path in cluster.data_dir.iterdir():
                if path.is_file():
                    owned.remove_if_ours(path, cluster.tag, log)
            try:
                cluster.data_dir.rmdir()
            except OSError:
                log(f"left {cluster.data_dir} in place: it holds files dali did not create")
        shutil.rmtree(cluster.state_dir, ignore_errors=True)

    return {
        "actions": [check],
        "clean": [errors.action(sweep)],
        # Up to date while the host passes: a failing check makes the action run and report it.
        "uptodate": [errors.uptodate(lambda: not problems(cluster, virt))],
        "verbosity": 2,
    }
