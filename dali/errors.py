"""The one exception type a user sees as a message instead of a traceback, and the wrappers
that keep it that way inside doit.

doit shows an exception raised by an action as a full traceback. `action()` turns a DaliError
into a one-line failure instead (dali/reporter.py prints it), while a real bug still shows its
traceback. `Step` is a python-action with a title, so `doit clean` prints what it does as a
sentence ("define:ivpa - executing 'shut down and undefine ivpa'") rather than a function name.
"""

from __future__ import annotations

import functools

from doit.action import PythonAction
from doit.exceptions import TaskFailed


class DaliError(Exception):
    """A problem the user can fix; its message is one line naming the setting/thing and the fix."""


def action(fn):
    """Wrap a doit python-action: DaliError -> TaskFailed(message); return values pass through
    (a dict becomes the task's values, for getargs and result_dep)."""
    @functools.wraps(fn)  # keeps the signature: doit passes `dryrun` only to callables that take it
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaliError as e:
            return TaskFailed(str(e))
    return run


def uptodate(fn):
    """Wrap a doit uptodate check: doit does not catch what an uptodate callable raises, so a
    DaliError means "not up to date" and the task's action runs and reports the problem.
    None passes through: doit then ignores the check."""
    @functools.wraps(fn)
    def check(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            return None if result is None else bool(result)
        except DaliError:
            return False
    return check


class Step(PythonAction):
    """A python-action whose title reads as a sentence in doit's output."""

    def __init__(self, title: str, fn, *args, **kwargs):
        super().__init__(action(fn), args, kwargs)
        self.title = title

    def __str__(self) -> str:
        return self.title
