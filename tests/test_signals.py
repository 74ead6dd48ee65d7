"""Ctrl-C, SIGTERM and SIGHUP at any instant of a real `doit`: one line, exit 130 (143, 129), no
traceback, from the moment doit makes dali's task loader (dali/loader.py) to dali's last look
before Python exits (dali/commands.py); a signal after that last look is ignored, and a signal
ignored when doit started stays ignored.

Each run is held at a point of the test's choosing (tests/support/held_doit.py), and the signal
is sent once it says it is there: where it lands does not depend on the host's speed. The
cluster is libvirt's in-memory test driver, where nothing exists: `doit list`, `doit clean -n`
and `doit status` run whole and make nothing.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from dali.cluster import REPO
from support.cluster import unique_tag
from support.doit import as_at_a_terminal, start_doit

TAG = unique_tag("sig")
STOPPED = ("dali: stopped by {}; what was done is kept and nothing is half-made: run the same "
           "doit command again to carry on")

# (the hold, where the run is then): in the order a run meets them.
EVERY_DOIT = [
    (("--before", "doit.cmd_base:DodoTaskLoader.setup"), "doit about to import dodo.py"),
    (("--before", "dali.settings:load"), "dodo.py reading the cluster file"),
    (("--after", "doit.doit_cmd:DoitMain.run"), "doit done, Python about to exit"),
    (("--before", "dali.lock:forget_if_gone"), "dodo.py's atexit callback"),
    (("--before", "dali.commands:_honour_a_late_signal"), "dali's last look, about to begin"),
]
OWN_POINT = {  # the command's own work, in the middle of the run
    ("list",): ("--before", "doit.cmd_list:List._execute"),
    ("clean", "-n"): ("--before", "dali.cleaning:_print_collected"),
    ("status",): ("--at-task", "status"),
}
COMMANDS = list(OWN_POINT)


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory):
    where = tmp_path_factory.mktemp("signals")
    path = where / "cluster.toml"
    path.write_text(f'uri = "test:///default"\ntag = "{TAG}"\ndir = "{where / "data"}"\n')
    yield path
    assert not (where / "data").exists() and not list((REPO / "state").glob(f"{TAG}*")), \
        "a doit on a cluster that does not exist made something"


def held_and_signalled(cluster_file, words, hold, sig=signal.SIGINT, **start) -> tuple[int, str, list[str]]:
    """`doit WORDS`, held as `hold` says, sent `sig` once it is held: its exit status, stdout,
    and its stderr's lines but the first (which says where it was held)."""
    run = start_doit(*words, f"config={cluster_file}", hold=hold, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, **start)
    first = run.stderr.readline()
    if not first.startswith("held at"):
        run.kill()
        pytest.fail(f"never held at {hold}: {first}{run.stderr.read()}")
    run.send_signal(sig)
    out, err = run.communicate(timeout=120)
    return run.returncode, out, err.splitlines()


def assert_stopped(returncode, out, err, sig=signal.SIGINT) -> None:
    name, status = {signal.SIGINT: ("Ctrl-C", 130), signal.SIGTERM: ("SIGTERM", 143),
                    signal.SIGHUP: ("SIGHUP", 129)}[sig]
    assert "Traceback" not in out + "\n".join(err), err
    assert (returncode, err) == (status, [STOPPED.format(name)]), out


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("hold", [pytest.param(hold, id=where) for hold, where in EVERY_DOIT]
                         + [pytest.param(None, id="the command's own work")])
def test_ctrl_c_anywhere_in_a_doit_is_one_line_and_exit_130(cluster_file, words, hold):
    assert_stopped(*held_and_signalled(cluster_file, words, hold or OWN_POINT[words]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("hold", [EVERY_DOIT[0][0], EVERY_DOIT[-1][0]], ids=["first", "last"])
def test_sigterm_and_sighup_as_well(cluster_file, hold, sig):
    assert_stopped(*held_and_signalled(cluster_file, ("list",), hold, sig), sig)


def test_a_signal_between_the_last_block_and_the_last_look_is_honoured(cluster_file):
    """Held right after dali blocks the signals for its last look: the Ctrl-C stays pending
    (the hold sleeps on), and the look finds it when the hold ends."""
    hold = ("--after", "dali.commands:signal.pthread_sigmask", "--seconds", "5")
    assert_stopped(*held_and_signalled(cluster_file, ("list",), hold))


def test_a_signal_after_the_last_look_is_ignored_and_the_run_ends_as_it_would_have(cluster_file):
    """In the last milliseconds, while Python tears itself down after atexit, no code of
    dali's runs any more: the signal is ignored, and the run, which did everything, exits with
    its own status. It was killed by it (exit -2, no line) when Python had given its handler
    back to the default action."""
    returncode, out, err = held_and_signalled(cluster_file, ("list",), ("--at-teardown", "--seconds", "2"))
    assert (returncode, err) == (0, []), out
    assert "status " in out, "the whole list"


def test_a_signal_ignored_when_doit_starts_stays_ignored(cluster_file):
    """`nohup doit ... &`: a SIGHUP (the terminal closing) does not stop it."""
    returncode, out, err = held_and_signalled(cluster_file, ("list",), ("--before", "dali.settings:load", "--seconds", "2"),
                                              signal.SIGHUP, ignored=(signal.SIGHUP,))
    assert (returncode, err) == (0, []), out
    assert "status " in out, "the whole list"


UNDO = '''
import time
from dali.commands import exit_cleanly_on_signals, undone_if_stopped

exit_cleanly_on_signals()

def undo():
    print("undoing", flush=True)
    time.sleep(1)
    print("undone", flush=True)

with undone_if_stopped(undo):
    print("inside", flush=True)
    time.sleep(60)
'''


def test_a_stop_runs_what_must_be_undone_once_whatever_comes_meanwhile(tmp_path):
    """Ctrl-C inside undone_if_stopped: its undo runs before the exit, and a second Ctrl-C or a
    SIGTERM while it runs neither cuts it short nor says a second line."""
    script = tmp_path / "undo.py"
    script.write_text(UNDO)
    run = subprocess.Popen([str(REPO / ".venv" / "bin" / "python"), str(script)], text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=as_at_a_terminal())
    assert run.stdout.readline() == "inside\n"
    run.send_signal(signal.SIGINT)
    assert run.stdout.readline() == "undoing\n"
    run.send_signal(signal.SIGINT)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=30)
    assert (run.returncode, out, err.splitlines()) == (130, "undone\n", [STOPPED.format("Ctrl-C")])
