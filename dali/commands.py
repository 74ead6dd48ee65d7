"""Host programs dali runs (qemu-img, ssh-keygen, tar, debootstrap, ...), and what happens to
them, and to dali, when a run is stopped.

A failure of a program is one line (DaliError). Each program runs in a session of its own, so
dali decides when it stops rather than the terminal: on Ctrl-C, SIGTERM or SIGHUP, dali stops
the programs it started, says so in one line and exits (130 for Ctrl-C). Nothing needs more
cleaning than that: every action builds under a temporary name and renames at the end, so the
next run simply carries on. A SIGKILL gives dali no chance to do anything: the kernel then
kills each program with it (PR_SET_PDEATHSIG), and what they left half-made is removed by the
next run (see scratch.remove_abandoned_work()).

A stop undoes first what must not outlive dali (undone_if_stopped: the nodes `doit dump` paused).
The handlers are installed as early as doit lets dali run code (dali/loader.py), and the last
thing dali does before Python exits is to honour a signal that came too late for them
(_honour_a_late_signal). docs/reliability.md says what is left: the first tens of milliseconds
of a doit, before any of dali runs, and the last few, after its last look.
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Callable

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
_handled: set[signal.Signals] = set()  # those of _EXIT not ignored when dali started
_undo: list[Callable[[], None]] = []
_installed = [False]
_stopping = [False]


@contextmanager
def undone_if_stopped(undo: Callable[[], None]):
    """For the with-block: a stop by Ctrl-C, SIGTERM or SIGHUP runs undo() before dali exits
    (the stop ends the process where it stands, and no finally runs). The block must still
    undo on its own way out, and what a SIGKILL would leave needs a record the next run reads."""
    _undo.append(undo)
    try:
        yield
    finally:
        _undo.remove(undo)


def _stopped(signum, _frame) -> None:
    if _stopping[0]:
        return  # a second signal while the first one's stop runs: one stop, one line
    _stopping[0] = True
    stop_children()
    for undo in reversed(_undo):
        try:
            undo()
        except Exception:
            pass  # what it could not undo, its record tells the next run
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    sys.__stderr__.write(f"dali: stopped by {name}; what was done is kept and nothing is half-made: "
                         "run the same doit command again to carry on\n")
    sys.__stderr__.flush()
    os._exit(_EXIT[signum])  # now: threads waiting on a guest must not hold the exit up


def _honour_a_late_signal() -> None:
    """The last atexit callback (registered before any other of dali's). After atexit, Python
    gives every signal it handles back to the default action, so a Ctrl-C landing as a run
    ends killed it by SIGINT, without dali's line. Blocked here (which runs the handler of
    one that arrived already), a signal still pending is honoured; ignored from then on, one
    that comes later cannot kill the run in its last milliseconds, and the run, finished,
    exits with its own status. Ignored rather than blocked: other threads may still be there."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _handled)
    late = signal.sigpending() & _handled
    if late:
        _stopped(min(late), None)
    for signum in _handled:
        signal.signal(signum, signal.SIG_IGN)


def exit_cleanly_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP stop dali as the module says, from now to the end of the
    process. Called as early as doit lets dali run (dali/loader.py) and again by dodo.py (a
    doit run outside the checkout reads no loader from its pyproject.toml): once is enough."""
    if not _installed[0]:
        _installed[0] = True
        # Ignored when dali started (nohup, a script's background job): it stays ignored.
        _handled.update(s for s in _EXIT if signal.getsignal(s) != signal.SIG_IGN)
        atexit.register(_honour_a_late_signal)
    for signum in _handled:
        signal.signal(signum, _stopped)
    # `doit pssh ... | head`: when the reader goes away, end at once and quietly, as any Unix
    # tool does, rather than with a BrokenPipeError traceback. Safe anywhere, like a SIGKILL:
    # the programs dali started die with it (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
