"""What the user sees while doit runs, and doit's records saved as each task ends.

The reporter is doit's ExecutedOnlyReporter (a task that is up to date prints nothing; `doit
list --status` shows them all). A failure carrying no traceback came from a DaliError (see
dali/steps.py): its message already names the setting and the fix. Tasks skipped because an
earlier one failed add nothing, so they are not listed. Anything else (a bug) keeps doit's full
report.

doit keeps what it learns about a run in memory and writes it to its database when the run
ends: a run killed with SIGKILL, SIGTERM or SIGHUP loses every record, even of the tasks that
finished. doit calls the reporter right after it records a task's success or failure, so the
reporter commits those records to the sqlite3 database there and then (save_records_now).
"""

import sys

from doit.dependency import SqliteDB
from doit.exceptions import UnmetDependency
from doit.globals import Globals
from doit.reporter import ExecutedOnlyReporter


def log(line: str) -> None:
    """Progress for the user, on the real stderr as it happens.

    sys.__stderr__, not sys.stderr: doit swaps sys.stderr for a buffer while an action runs, and
    for a clean action it never shows that buffer ("left ... in place: dali did not create it")."""
    print(line, file=sys.__stderr__, flush=True)


def save_records_now() -> None:
    """Write doit's pending records (doit.dependency.SqliteDB keeps them in _cache/_dirty until
    dump()) and commit, without closing: the run goes on using the same connection."""
    manager = Globals.dep_manager
    db = getattr(manager, "backend", None)
    if not isinstance(db, SqliteDB):
        return
    for task_id in db._dirty:
        db._conn.execute("insert or replace into doit values (?,?)",
                         (task_id, db.codec.encode(db._cache[task_id])))
    db._dirty = set()
    db._conn.commit()  # also commits the deletes doit made for a failed task


class DaliReporter(ExecutedOnlyReporter):
    desc = "doit's output for executed tasks; user errors as one line; records saved per task"

    def add_success(self, task):
        if task.actions:  # a group task's record is rebuilt for free: no commit (and fsync) for it
            save_records_now()
        super().add_success(task)

    def add_failure(self, task, fail):
        save_records_now()
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
