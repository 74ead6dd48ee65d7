"""Host programs dali runs (qemu-img, ssh-keygen, tar, mkfs.ext4, ...): a failure is one line."""

from __future__ import annotations

import subprocess

from dali.errors import DaliError


def run(command: list[str], what: str) -> str:
    """Run command and return its stdout; a failure becomes a DaliError with its last line of output."""
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True, errors="replace")
    except FileNotFoundError:
        raise DaliError(f"{command[0]} is not installed: run scripts/setup") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise DaliError(f"{what} failed ({command[0]} exit {done.returncode}: {last})")
    return done.stdout
