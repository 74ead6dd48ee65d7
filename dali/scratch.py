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
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            found.append(work)
    return found


def remove_abandoned_work(parent: Path) -> None:
    """Delete work directories of earlier builds whose process is gone, after killing what is
    left of the programs they ran."""
    for work in abandoned_work(parent):
        try:
            os.killpg(int((work / "pgid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # no record, or that group is gone already
        remove_tree(work)
