"""The one exception type a user sees as a message instead of a traceback, and the one line
it becomes.

A DaliError is a problem the user can fix: its message is one line naming the setting or the
thing and the fix. one_line() is that line for a DaliError or an error libvirt reports (None for
a bug, which keeps its traceback); unforeseen() is the line for an exception no check foresaw.
The doit side of it (actions and up-to-date checks that turn these into one-line failures, the
titled Step) is dali/steps.py.
"""

from __future__ import annotations

import os
import traceback

import libvirt


class DaliError(Exception):
    """A problem the user can fix; its message is one line naming the setting/thing and the fix."""


def one_line(e: Exception) -> str | None:
    """The one line a user sees for an error they can act on; None for a bug."""
    if isinstance(e, DaliError):
        return str(e)
    if isinstance(e, libvirt.libvirtError):
        return (f"libvirt: {e.get_error_message()}: see /var/log/libvirt/, and check that libvirtd "
                "runs (scripts/setup starts it)")
    return None


def unforeseen(what: str, e: BaseException) -> str:
    """The one line for an exception no check foresaw (a bug in dali, or an input none of its
    checks knows): what was being done, the exception, and how to see the traceback."""
    if os.environ.get("DALI_TRACEBACK"):
        traceback.print_exception(e)
    return (f"dali: {what} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(unforeseen: run again with DALI_TRACEBACK=1 for the traceback, and please report it)")
