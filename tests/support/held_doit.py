"""`doit ARGS`, held at one chosen point for a while, so that a signal sent once the run says it
is held lands exactly there, whatever the host's speed: the tests' way to stop a run at an
instant they choose (support.doit.run_until, for tests/test_kill.py; tests/test_signals.py). dali
itself has no such hook.

    .venv/bin/python -P tests/support/held_doit.py [HOLD ...] [--seconds N] -- ARGS...

HOLD is one of
    --at-task REGEX       at the start of the first task whose name matches (its title printed,
                          the records of the tasks before it committed, its action not begun)
    --before MOD:NAME     as the function MOD.NAME (a dotted name within the module) is first
                          called, before it runs
    --after MOD:NAME      as it first returns
    --at-teardown         after the last of Python's atexit callbacks, while the interpreter
                          tears its modules down: after dali's last look at its signals
and each says `held at WHAT` on stderr (the real one) when the run gets there. --seconds: how
long it is held (60 by default), then the run carries on. Run with -P, from the checkout (so
that doit reads its pyproject.toml), as `doit` itself is run: this file's directory must not
come first on sys.path, where support/doit.py would hide doit.
"""

import argparse
import atexit
import functools
import importlib
import os
import re
import signal
import sys
import time


def held(what: str, seconds: float) -> None:
    sys.__stderr__.write(f"held at {what}\n")
    sys.__stderr__.flush()
    time.sleep(seconds)


def _owner_and_name(target: str):
    module, _, dotted = target.partition(":")
    owner = importlib.import_module(module)
    *path, name = dotted.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def hold_around(target: str, seconds: float, after: bool) -> None:
    owner, name = _owner_and_name(target)
    original = getattr(owner, name)
    first = [True]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        hold, first[0] = first[0], False
        if hold and not after:
            held(target, seconds)
        result = original(*args, **kwargs)
        if hold and after:
            held(target, seconds)
        return result
    setattr(owner, name, wrapper)


def hold_at_task(pattern: str, seconds: float) -> None:
    """What DALI_HOLD_AT_TASK did in dali/reporter.py: a kill on a task boundary would otherwise
    land a task or two later at times (a render and a define take milliseconds)."""
    from dali.reporter import DaliReporter
    original = DaliReporter.execute_task
    first = [True]

    def execute_task(self, task):
        original(self, task)
        if first[0] and task.actions and re.fullmatch(pattern, task.name):
            first[0] = False
            self.outstream.flush()
            held(f"task {task.name}", seconds)
    DaliReporter.execute_task = execute_task


class _HeldAtTeardown:
    """Held when the interpreter collects its last garbage, after atexit and after Python has
    given every signal it handled back (signal.getsignal says None for them then). Garbage, as
    a cycle made by the last atexit callback (registered first): dodo.py freezes what lives
    then, so a global of this script is never freed. What it needs is bound now: the modules
    it would look up may be gone by then."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cycle = self

    def __del__(self, write=os.write, sleep=time.sleep, getsignal=signal.getsignal):
        given_back = getsignal(signal.SIGINT) is None
        write(2, b"held at teardown\n" if given_back else b"held too early for teardown\n")
        sleep(self.seconds)


def hold_at_teardown(seconds: float) -> None:
    atexit.register(lambda: _HeldAtTeardown(seconds) and None)


def main() -> None:
    parser = argparse.ArgumentParser(prog="held_doit.py")
    parser.add_argument("--at-task")
    parser.add_argument("--before", action="append", default=[])
    parser.add_argument("--after", action="append", default=[])
    parser.add_argument("--at-teardown", action="store_true")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("args", nargs="*")
    given = parser.parse_args()
    # doit names itself after argv[0] (DoitMain.BIN_NAME, read as doit.doit_cmd is imported).
    sys.argv = ["doit", *given.args]
    if given.at_task:
        hold_at_task(given.at_task, given.seconds)
    for target in given.before:
        hold_around(target, given.seconds, after=False)
    for target in given.after:
        hold_around(target, given.seconds, after=True)
    if given.at_teardown:
        hold_at_teardown(given.seconds)
    from doit.__main__ import main as doit_main
    doit_main()


if __name__ == "__main__":
    main()
