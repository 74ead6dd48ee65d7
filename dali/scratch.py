"""Scratch directories for builds that a run can be killed in the middle of.

A build (debootstrap, the node image, a modules disk) works in `.dali-work.<pid>.<random>`
beside its result and renames the result into place when it is complete, so a killed run
leaves only its scratch directory. The next run deletes those whose process is gone, after
killing what is left of the programs they ran (their process group is recorded in `pgid`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from dali.errors import DaliError
from dali.text import is_digits

_WORK_PREFIX = ".dali-work."


def remove_tree(path: Path) -> None:
    """rm -rf path, after unmounting anything debootstrap left mounted inside it.

    Why: a debootstrap that is killed can leave /proc, /sys or a bind mount of the host's /dev
    mounted in the tree; deleting through those would hit the host.
    """
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4].startswith(prefix) for line in f):
            raise DaliError(f"{path} still has filesystems mounted inside: unmount them, then delete it")
    shutil.rmtree(path)


def work_dir(parent: Path) -> Path:
    """A fresh work directory named after this process: .dali-work.<pid>.<random>."""
    return Path(tempfile.mkdtemp(prefix=f"{_WORK_PREFIX}{os.getpid()}.", dir=parent))


def abandoned_work(parent: Path) -> list[Path]:
    """The work directories under parent whose process is gone (killed, power cut)."""
    found = []
    for work in parent.glob(f"{_WORK_PREFIX}*"):
        pid = work.name[len(_WORK_PREFIX):].split(".")[0]
        if is_digits(pid) and not Path(f"/proc/{pid}").exists():
            found.append(work)
    return found


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_process_group(work: Path, pid: int) -> None:
    """Note, in the work directory, the process group of a program started with its own group
    (its pid), with what tells that group from a later one with the same number: this boot
    and the leader's start time."""
    (work / "pgid").write_text(f"{pid} {_boot_id()} {_start_time(pid)}\n")


def forget_process_group(work: Path) -> None:
    (work / "pgid").unlink()


def _still_the_builds(record: str) -> int | None:
    """The recorded process group, if it can still be the build's: the same boot, and no other
    process now holds the leader's pid (the kernel gives out no pid that is a live group's
    id, so with the leader gone, whoever is left in the group is the build's)."""
    try:
        pgid, boot, started = record.split()
        pgid = int(pgid)
    except ValueError:
        return None  # not a record this dali wrote
    if boot != _boot_id():
        return None  # written before a reboot: that group is long gone, its number anyone's
    now = _start_time(pgid)
    return pgid if now is None or now == started else None


def remove_abandoned_work(parent: Path) -> None:
    """Delete work directories of earlier builds whose process is gone, after killing what is
    left of the programs they ran."""
    for work in abandoned_work(parent):
        try:
            pgid = _still_the_builds((work / "pgid").read_text())
            if pgid is not None:
                os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass  # no record, or that group is gone already
        remove_tree(work)
