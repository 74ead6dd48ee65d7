"""One doit at a time changes a cluster: the first action that changes something takes the
cluster's lock (state/<tag>.lock, flock) and holds it until the process ends, however it ends.

A second doit on the same cluster waits, with a line saying for whom; doits on other clusters
never wait. Tasks only check facts before their actions run, and every action checks again what
it is about to change, so a run that waited acts on what the first one left.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dali.reporter import log

_held: dict[Path, int] = {}  # lock file -> open descriptor, for the life of the process


def hold(lock_file: Path, cluster: str) -> None:
    """Take the cluster's lock if this process does not hold it yet; wait for it if another does."""
    if lock_file in _held:
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        log(f"waiting: another doit ({holder}) is changing cluster {cluster}; "
            "this one carries on when it ends")
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    _held[lock_file] = fd
