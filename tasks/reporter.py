"""What the user sees: progress lines, and doit's console reporter with a user's mistakes shown
as one line on stderr.

A failure carrying no traceback came from a DaliError (see tasks/errors.py): its message already
names the setting and the fix. Tasks skipped because an earlier one failed add nothing, so they
are not listed. Anything else (a bug) keeps doit's full report.
"""

import sys

from doit.exceptions import UnmetDependency
from doit.reporter import ConsoleReporter


def log(line: str) -> None:
    """Progress for the user, on stderr, as it happens (tasks run with verbosity 2)."""
    print(line, file=sys.stderr, flush=True)


class DaliReporter(ConsoleReporter):
    desc = "doit's console output; user errors as one line"

    def add_failure(self, task, fail):
        if isinstance(fail, UnmetDependency):
            return
        if not fail.traceback:
            sys.stderr.write(f"dali: {task.name}: {fail.message}\n")
            return
        super().add_failure(task, fail)

    def skip_uptodate(self, task):
        # "-- task" for every up-to-date step drowns what ran; `doit -v 2 list --status` shows it.
        pass

    def complete_run(self):
        # The default dumps captured output of failed tasks; ours stream it live (verbosity 2).
        if self.runtime_errors:
            sys.stderr.write("dali: " + "\n".join(self.runtime_errors) + "\n")
