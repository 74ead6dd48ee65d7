"""What the user sees while doit runs: progress lines, and doit's own reporter with a user's
mistakes shown as one line.

The reporter is doit's ExecutedOnlyReporter (a task that is up to date prints nothing; `doit
list --status` shows them all). A failure carrying no traceback came from a DaliError (see
dali/errors.py): its message already names the setting and the fix. Tasks skipped because an
earlier one failed add nothing, so they are not listed. Anything else (a bug) keeps doit's full
report.
"""

import sys

from doit.exceptions import UnmetDependency
from doit.reporter import ExecutedOnlyReporter


def log(line: str) -> None:
    """Progress for the user, on the real stderr as it happens.

    sys.__stderr__, not sys.stderr: doit swaps sys.stderr for a buffer while an action runs, and
    for a clean action it never shows that buffer ("left ... in place: dali did not create it")."""
    print(line, file=sys.__stderr__, flush=True)


class DaliReporter(ExecutedOnlyReporter):
    desc = "doit's output for executed tasks; user errors as one line"

    def add_failure(self, task, fail):
        if isinstance(fail, UnmetDependency):
            return
        if not fail.traceback:
            sys.stderr.write(f"dali: {task.name}: {fail.message}\n")
            return
        super().add_failure(task, fail)

    def complete_run(self):
        # The default dumps captured output of failed tasks; ours went to the terminal live.
        if self.runtime_errors:
            sys.stderr.write("dali: " + "\n".join(self.runtime_errors) + "\n")
