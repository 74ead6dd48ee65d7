"""One doit at a time changes a cluster: the first action that changes something takes the
cluster's lock (state/<tag>.lock, flock) and holds it until the process ends, however it ends.
What every cluster on the host shares (picking a free subnet) has a host-wide lock instead
(host_lock), in a directory only root can write.

A second doit on the same cluster waits, with a line saying for whom; doits on other clusters
never wait. Tasks only check facts before their actions run, and every action checks again what
it is about to change, so a run that waited acts on what the first one left.
"""

from __future__ import annotations

import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from dali.errors import DaliError
from dali.reporter import log

_held: dict[Path, int] = {}  # lock file -> open descriptor, for the life of the process


def hold(lock_file: Path, cluster: str) -> None:
    """Take the cluster's lock if this process does not hold it yet; wait for it if another does."""
    if lock_file in _held:
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            log(f"waiting: another doit ({holder}) is changing cluster {cluster}; "
                "this one carries on when it ends")
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _is_still_at(fd, lock_file):
            break
        # The holder removed the file (its clean ended the cluster): a lock on that file would
        # exclude no one who opens the new one. Take the one at the path now.
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    _held[lock_file] = fd


@contextmanager
def held_unless_busy(lock_file: Path):
    """For the with-block: whether this process holds the cluster's lock, as it did already or
    taken now, without waiting, when no other doit holds it (and given back at the end). For
    a change a command that only looks (doit status) makes only while no other doit changes
    the cluster."""
    if lock_file in _held:
        yield True
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = _is_still_at(fd, lock_file)
        except BlockingIOError:
            free = False
        yield free
    finally:
        os.close(fd)


def _is_still_at(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def forget_if_gone(lock_file: Path, dep_file: Path, state_dir: Path) -> None:
    """At the end of every doit of a cluster: one with no state/<tag>/ (never built, as after a
    refusal, or cleaned to the end) keeps no doit database and no lock file either. Done with
    the lock held (this process's, or taken now without waiting), so no other doit is changing
    the cluster; a doit that waits for it takes the new file (hold)."""
    if state_dir.exists():
        return
    fd = _held.get(lock_file)
    if fd is None and lock_file.exists():
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_NOFOLLOW)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another doit holds it, and may build the cluster again
            return
    if state_dir.exists():  # made meanwhile, by a doit that took no lock yet
        return
    for leftover in (dep_file, *(dep_file.with_name(dep_file.name + s) for s in ("-journal", "-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    if fd is not None:
        lock_file.unlink(missing_ok=True)


HOST_LOCKS = Path("/run/dali")  # root's own: not /run/lock, where every user may create files


@contextmanager
def host_lock(name: str):
    """Hold the host-wide lock `name` (HOST_LOCKS/<name>.lock) for the with-block. The
    directory is made root's, 0700, and checked to be so: in a directory others can write, a
    local user could plant a symlink at the lock's name (and root would create or truncate
    what it points at) or hold the lock and stall every cluster. Opened without following a
    symlink all the same."""
    try:
        os.mkdir(HOST_LOCKS, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(HOST_LOCKS)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        raise DaliError(f"{HOST_LOCKS} is not a directory of root's that only root can enter: "
                        f"remove it (dali makes it again, root's, mode 0700)")
    path = HOST_LOCKS / f"{name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise DaliError(f"{path}: {e.strerror}: remove it (dali makes it again)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
