"""`doit` run from the checkout as a user runs it: waited for (run_doit), started (start_doit), or
stopped by a signal when it says a given line (run_until); and what a failed run must look like
(one_error_line)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from typing import TYPE_CHECKING

from dali.cluster import REPO

if TYPE_CHECKING:
    from support.cluster import ClusterUnderTest

DOIT = REPO / ".venv" / "bin" / "doit"
PYTHON = REPO / ".venv" / "bin" / "python"
HELD_DOIT = REPO / "tests" / "support" / "held_doit.py"  # doit, held at a point of a test's choosing


def user_env(**extra: str) -> dict:
    """The environment a user's shell would give doit, without this shell's DALI_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALI_") and k != "LIBVIRT_DEFAULT_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def run_doit(*args: str, env: dict | None = None, timeout: int = 3600) -> subprocess.CompletedProcess:
    """`doit ARGS` from the checkout, as a user types it; prints what it said (pytest shows it
    for a failing test)."""
    run = subprocess.run([str(DOIT), *args], cwd=REPO, capture_output=True, text=True,
                         env=user_env(**(env or {})), timeout=timeout)
    print(f"$ doit {' '.join(args)}  (exit {run.returncode})\n{run.stdout}{run.stderr}")
    return run


def as_at_a_terminal(ignored: tuple[signal.Signals, ...] = ()):
    """For a child, between fork and exec: SIGINT, SIGTERM and SIGHUP as a terminal's program
    has them (delivered), whatever this process inherited (a non-interactive shell starts its
    background jobs with SIGINT ignored, Python keeps it so, and a suite started under nohup
    passes SIGHUP on ignored), and `ignored` ignored, as nohup does SIGHUP."""
    def reset() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
    return reset


def start_doit(*args: str, hold: tuple[str, ...] = (), env: dict | None = None,
               ignored: tuple[signal.Signals, ...] = (), **popen) -> subprocess.Popen:
    """`doit ARGS` from the checkout, as a user starts it at a terminal, not waited for. `hold`:
    tests/support/held_doit.py's options, holding the run at a point (it says `held at ...` on
    stderr when it is there)."""
    command = [str(PYTHON), "-P", str(HELD_DOIT), *hold, "--", *args] if hold else [str(DOIT), *args]
    return subprocess.Popen(command, cwd=REPO, env=user_env(**(env or {})), text=True,
                            preexec_fn=as_at_a_terminal(ignored), **popen)


def run_until(c: ClusterUnderTest, pattern: str, sig: signal.Signals, delay: float, *args: str,
              hold: tuple[str, ...] = ()) -> tuple[bool, str]:
    """Run doit; when it prints a line matching pattern, wait `delay` s and send `sig`.
    Returns whether that happened, and everything doit printed.

    A pattern that is a task's title (`^\\.  TASK$`) with no delay is a kill on the boundary
    before TASK: the run is held there (tests/support/held_doit.py --at-task) until the signal
    comes, which would otherwise land wherever the run had got to by then, a task or two later
    at times. `hold`: held_doit.py's options for another point the run is held at, one it
    reaches after the pattern's line (say, the step after the last one that prints a line)."""
    title = re.fullmatch(r"\^\\\.  (.+)\$", pattern)
    if title and delay == 0:
        hold = ("--at-task", title.group(1), *hold)
    process = start_doit(*args, f"config={c.path}", hold=hold, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    said, hit = [], threading.Event()
    for line in process.stdout:
        said.append(line)
        if not hit.is_set() and re.search(pattern, line):
            hit.set()
            threading.Timer(delay, process.send_signal, [sig]).start()
    process.wait()
    output = "".join(said)
    print(f"$ doit {' '.join(args)}  # {sig.name} at {pattern!r}+{delay}s: exit {process.returncode}\n{output}")
    if hit.is_set():
        if sig == signal.SIGINT:
            assert process.returncode == 130 and "dali: stopped by Ctrl-C" in output, output
        else:
            assert process.returncode == -signal.SIGKILL, output
        assert "Traceback" not in output
    return hit.is_set(), output


def one_error_line(run: subprocess.CompletedProcess) -> str:
    """The run failed, printed no traceback, and exactly one 'dali: ' line: return it."""
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("dali: ")]
    assert len(errors) == 1, output
    return errors[0]
