"""dali's glue to doit: how every stage's python-actions and up-to-date checks are wrapped.

doit shows an exception raised by an action as a full traceback. `action()` turns a DaliError,
or an error libvirt reports, into a one-line failure instead (dali/reporter.py prints it), while
a real bug still shows its traceback. `Step` is the python-action every stage uses: it has a
title, so `doit clean` prints what it does as a sentence ("define:ivpa - executing 'shut down
and undefine ivpa'"), and it takes the cluster's lock before it changes anything
(dali/lock.py). `CleanStep` is a Step for `doit clean`: its failure stops the whole clean, with
a non-zero exit, instead of doit's habit of printing it and carrying on. `uptodate()` wraps a
check, and `Checking` says to the libvirt adapter whether one runs (dali/virt.py shares one
listing of the domains between checks). `GIVEN` is the one option of the tasks of the verbs that
take free words (torture, pssh, pput, dump): what their doit commands parsed (dali/verbs.py).
"""

from __future__ import annotations

import functools
import sys

import libvirt
from doit.action import PythonAction
from doit.exceptions import TaskFailed

from dali import lock
from dali.errors import DaliError, one_line

# A verb's task option, set by its doit command. No long name: doit itself never reads it from
# the command line. The task run otherwise (`doit run torture`) gets None: the verb's defaults.
GIVEN = {"name": "given", "default": None}


def action(fn):
    """Wrap a doit python-action: a user's error -> TaskFailed(one line); return values pass
    through (a dict becomes the task's values, for getargs and result_dep)."""
    @functools.wraps(fn)  # keeps the signature: doit passes `dryrun` only to callables that take it
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DaliError, libvirt.libvirtError) as e:
            return TaskFailed(one_line(e))
    return run


class Checking:
    """Whether an uptodate check is running, and how many actions have started so far.

    A doit that changes nothing asks libvirt the same questions many times: preflight looks up
    every node, each define:<node> asks whether its node is defined, prune lists the domains
    that are ours. Checks only look, so dali/virt.py lets them share one listing of the
    domains, made by the first check after the last action started (an action may change what
    the listing saw). Actions never use it: what an action changes or deletes is decided from
    what libvirt says at that moment."""
    active = False
    actions_started = 0


def uptodate(fn):
    """Wrap a doit uptodate check: doit does not catch what an uptodate callable raises, so a
    user's error means "not up to date" and the task's action runs and reports the problem.
    None passes through: doit then ignores the check."""
    @functools.wraps(fn)
    def check(*args, **kwargs):
        outer, Checking.active = Checking.active, True
        try:
            result = fn(*args, **kwargs)
            return None if result is None else bool(result)
        except (DaliError, libvirt.libvirtError):
            return False
        finally:
            Checking.active = outer
    return check


class Step(PythonAction):
    """A python-action with a title that reads as a sentence in doit's output. A step that
    `changes` a cluster takes that cluster's lock first; a step that only looks does not."""

    def __init__(self, title: str, fn, *args, changes=None, **kwargs):
        super().__init__(action(fn), args, kwargs)
        self.title = title
        self.lock = (changes.lock_file, changes.tag) if changes is not None else None

    def execute(self, out=None, err=None):
        Checking.actions_started += 1
        if self.lock and not self.kwargs.get("dryrun"):  # doit clean -n only looks
            lock.hold(*self.lock)
        return super().execute(out, err)

    def __str__(self) -> str:
        return self.title


class CleanStep(Step):
    """A Step of `doit clean`. doit prints a failed clean action and goes on to the next one,
    then exits 0; a CleanStep stops the clean there, with one line and exit status 1, so nothing
    is deleted after something that should have gone before it (a domain) could not go."""

    def execute(self, out=None, err=None):
        failure = super().execute(out, err)
        if failure is not None:
            sys.stderr.write(f"dali: {self.task.name}: {failure.message}\n"
                             if isinstance(failure, TaskFailed) else str(failure))
            sys.stderr.flush()
            raise SystemExit(1)
        return failure
