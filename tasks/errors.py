"""The one exception type a user sees as a message instead of a traceback.

doit shows an exception raised by an action as a full traceback. The two wrappers below turn a
DaliError into a one-line failure instead (tasks/reporter.py prints it), while a real bug
still shows its traceback.
"""

import functools

from doit.exceptions import TaskFailed


class DaliError(Exception):
    """A problem the user can fix; its message is one line naming the setting/thing and the fix."""


def action(fn):
    """Wrap a doit python-action: DaliError -> TaskFailed(message)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            fn(*args, **kwargs)
        except DaliError as e:
            return TaskFailed(str(e))
        return None
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
