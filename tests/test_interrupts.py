"""Stopping doit at any moment, on a tiny dodo.py made of dali's own pieces (its reporter, its
Step with the cluster lock, its signal handling): doit's records survive a SIGKILL, Ctrl-C ends
in one line with exit 130 and takes the programs dali started with it, and a second doit on the
same cluster waits for the first. The real pipeline is killed at every step in test_kill.py."""

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from support.doit import DOIT, as_at_a_terminal, user_env

DODO = '''
import os
from pathlib import Path
from doit.tools import config_changed
from dali.commands import exit_cleanly_on_signals, run
from dali.steps import Step
from dali.reporter import DaliReporter

exit_cleanly_on_signals()
HERE = Path(__file__).parent

class Cluster:  # what Step's lock needs of a cluster
    tag = "tiny"
    lock_file = HERE / "tiny.lock"

DOIT_CONFIG = {"dep_file": str(HERE / "tiny.doit.sqlite"), "backend": "sqlite3",
               "reporter": DaliReporter, "verbosity": 2}

def task_first():
    return {"actions": [Step("first", lambda: None, changes=Cluster)], "uptodate": [config_changed("v1")]}

def task_second():
    seconds = os.environ.get("SLEEP", "300")
    return {"actions": [Step("second", lambda: run(["sleep", seconds], what="sleep") and None,
                             changes=Cluster)],
            "task_dep": ["first"], "uptodate": [False]}
'''


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "dodo.py").write_text(DODO)
    return tmp_path


def start(where: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([str(DOIT)], cwd=where, env=user_env(**env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=as_at_a_terminal())


def wait_for_sleep(doit: subprocess.Popen, seconds: str, timeout: float = 30) -> int:
    """The pid of the `sleep SECONDS` that this doit of the tiny dodo started (its child: another
    run of these tests beside this one has a sleep of its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(doit.pid), "-f", f"^sleep {seconds}$"],
                               capture_output=True, text=True).stdout.split()
        if found:
            return int(found[0])
        time.sleep(0.1)
    pytest.fail(f"sleep {seconds} never started")


def still_runs(pid: int, seconds: float) -> bool:
    """Whether process `pid` still runs after up to `seconds` of waiting for it to end."""
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return Path(f"/proc/{pid}").exists()


def test_records_of_finished_tasks_survive_a_sigkill(tiny):
    run = start(tiny, SLEEP="301")
    sleep = wait_for_sleep(run, "301")  # first has finished, second is running
    run.send_signal(signal.SIGKILL)
    run.wait()
    rows = sqlite3.connect(tiny / "tiny.doit.sqlite").execute("select task_id from doit").fetchall()
    assert ("first",) in rows, "first's record was committed as it finished"
    again = subprocess.run([str(DOIT), "first"], cwd=tiny, env=user_env(), capture_output=True, text=True)
    assert ".  first" not in again.stdout, "so first is up to date for the next run"
    assert not still_runs(sleep, 5), "the child died with doit"


def test_ctrl_c_is_one_line_exit_130_and_stops_the_children(tiny):
    run = start(tiny, SLEEP="302")
    sleep = wait_for_sleep(run, "302")
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=30)
    assert run.returncode == 130
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["dali: stopped by Ctrl-C; what was done is kept and nothing is half-made: "
                     "run the same doit command again to carry on"]
    assert not still_runs(sleep, 5)


def test_a_second_doit_on_the_same_cluster_waits(tiny):
    first = start(tiny, SLEEP="303")
    wait_for_sleep(first, "303")
    second = start(tiny, SLEEP="1")
    time.sleep(3)
    assert second.poll() is None, "the second doit waits while the first holds the lock"
    first.send_signal(signal.SIGTERM)
    first.wait()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, out + err
    assert f"waiting: another doit (pid {first.pid}) is changing cluster tiny" in err


CLEAN_DODO = '''
from pathlib import Path
from doit.tools import config_changed
from dali.errors import DaliError
from dali.steps import CleanStep, Step
from dali.reporter import DaliReporter

HERE = Path(__file__).parent

class Cluster:
    tag = "tiny"
    lock_file = HERE / "tiny.lock"

DOIT_CONFIG = {"dep_file": str(HERE / "tiny.doit.sqlite"), "backend": "sqlite3",
               "reporter": DaliReporter, "verbosity": 2}

def fine(dryrun):
    pass

def cannot(dryrun):
    raise DaliError("two cannot go: a domain with a snapshot, say")

def task_one():
    return {"actions": [Step("one", lambda: None)], "uptodate": [config_changed("v")],
            "clean": [CleanStep("clean one", fine, changes=Cluster)]}

def task_two():
    return {"actions": [Step("two", lambda: None)], "uptodate": [config_changed("v")], "task_dep": ["one"],
            "clean": [CleanStep("clean two", cannot, changes=Cluster)]}

def task_three():
    return {"actions": [Step("three", lambda: None)], "uptodate": [config_changed("v")], "task_dep": ["two"],
            "clean": [CleanStep("clean three", fine, changes=Cluster)]}
'''


def test_a_stopped_clean_forget_keeps_what_it_forgot(tmp_path):
    """doit clean --forget stopped by a step that cannot go on (dali.steps.CleanStep): one line,
    exit 1, and the records it forgot before are gone for good (doit's own clean rolled them
    back), those of the tasks not cleaned kept."""
    (tmp_path / "dodo.py").write_text(CLEAN_DODO)
    subprocess.run([str(DOIT)], cwd=tmp_path, env=user_env(), check=True, capture_output=True)

    def recorded() -> set[str]:
        with sqlite3.connect(tmp_path / "tiny.doit.sqlite") as db:
            return {row[0] for row in db.execute("select task_id from doit")}
    assert recorded() == {"one", "two", "three"}
    run = subprocess.run([str(DOIT), "clean", "--forget"], cwd=tmp_path, env=user_env(),
                         capture_output=True, text=True)
    assert run.returncode == 1 and "dali: two: two cannot go" in run.stderr, run.stdout + run.stderr
    assert "executing" not in run.stdout, "dali's clean says only what it removes"
    assert recorded() == {"one", "two"}, "three was cleaned and forgotten before two stopped the clean"
