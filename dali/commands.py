"""Host programs dali runs (qemu-img, ssh-keygen, tar, debootstrap, ...), and what happens to
them, and to dali, when a run is stopped.

A failure of a program is one line (DaliError). Each program runs in a session of its own, so
dali decides when it stops rather than the terminal: on Ctrl-C, SIGTERM or SIGHUP, dali stops
the programs it started, says so in one line and exits (130 for Ctrl-C). Nothing needs more
cleaning than that: every action builds under a temporary name and renames at the end, so the
next run simply carries on. A SIGKILL gives dali no chance to do anything: the kernel then
kills each program with it (PR_SET_PDEATHSIG), and what they left half-made is removed by the
next run (see scratch.remove_abandoned_work()).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys

from dali.errors import DaliError

_PR_SET_PDEATHSIG = 1
_children: set[subprocess.Popen] = set()


@functools.cache
def _prctl():
    """libc's prctl(), loaded by the first spawn: importing ctypes with dali cost every doit
    3 ms, and most (a no-op doit) start no program."""
    import ctypes
    return ctypes.CDLL(None, use_errno=True).prctl


def spawn(command: list[str], **popen) -> subprocess.Popen:
    """Start a program in its own session, killed with dali if dali is killed."""
    prctl = _prctl()  # here, in dali: between fork and exec the child must not import or load

    def die_with_parent() -> None:  # runs in the child, between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    try:
        process = subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent,
                                   **popen)
    except FileNotFoundError:
        raise DaliError(f"{command[0]} is not installed: run scripts/setup") from None
    _children.add(process)
    return process


def finished(process: subprocess.Popen) -> None:
    _children.discard(process)


def run(command: list[str], what: str, timeout: float | None = None) -> str:
    """Run command and return its stdout; a failure becomes a DaliError with its last line of output."""
    process = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                    text=True, errors="replace")
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise DaliError(f"{what} did not finish within {timeout} s") from None
    finally:
        finished(process)
    if process.returncode != 0:
        last = (err.strip() or out.strip() or "no output").splitlines()[-1]
        raise DaliError(f"{what} failed ({command[0]} exit {process.returncode}: {last})")
    return out


def stop_children() -> None:
    """Kill every program dali started (and what they started) that still runs."""
    for process in list(_children):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def _stopped(signum, _frame) -> None:
    stop_children()
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    sys.__stderr__.write(f"dali: stopped by {name}; what was done is kept and nothing is half-made: "
                         "run the same doit command again to carry on\n")
    sys.__stderr__.flush()
    os._exit(_EXIT[signum])  # now: threads waiting on a guest must not hold the exit up


def exit_cleanly_on_signals() -> None:
    for signum in _EXIT:
        signal.signal(signum, _stopped)
    # `doit pssh ... | head`: when the reader goes away, end at once and quietly, as any Unix
    # tool does, rather than with a BrokenPipeError traceback. Safe anywhere, like a SIGKILL:
    # the programs dali started die with it (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
