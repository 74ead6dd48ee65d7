"""The verbs that take free words (doit torture, pssh, pput, dump) as a user types them: the words
after the verb's name are read by its one parser (dali/verbs.py), options anywhere (before
pssh's command), `--` ending them, words with a '=' kept, a config=PATH at either end naming the
cluster file. Through the real doit, on a cluster of libvirt's in-memory test driver where no
node runs: what a verb understood shows in the one line it fails with."""

import ast
import fcntl
import os
import re
import signal
import types

import pytest

import structure
from dali.cluster import REPO
from dali.errors import DaliError
from support.cluster import unique_tag
from support.doit import one_error_line, run_doit, run_until

TAG = unique_tag("verbs")
VERBS = ["dump", "pput", "pssh", "torture"]


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory):
    where = tmp_path_factory.mktemp("verbs")
    path = where / "cluster.toml"
    path.write_text(f'uri = "test:///default"\ntag = "{TAG}"\ndir = "{where / "data"}"\n')
    yield path
    assert not (where / "data").exists(), "a verb on a cluster that does not exist made its files"
    assert not list((REPO / "state").glob(f"{TAG}*")), "or left its doit records and lock"


def failing(cluster_file, *words: str) -> str:
    """`doit WORDS config=PATH`, which fails: its one line."""
    return one_error_line(run_doit(*words, f"config={cluster_file}"))


def refused(cluster_file, *words: str) -> str:
    """`doit WORDS config=PATH`, a mistake in the words: its one line, exit 2, no task begun."""
    run = run_doit(*words, f"config={cluster_file}")
    line = one_error_line(run)
    assert run.returncode == 2 and not re.search(r"^\.  ", run.stdout, re.M), run.stdout + run.stderr
    return line


def test_a_pssh_command_keeps_its_words_with_an_equals_sign(cluster_file):
    line = failing(cluster_file, "pssh", "--on", "b", "echo", "a=b", "rc=$?", "FOO=bar")
    assert line == f"dali: pssh: 'echo a=b rc=$? FOO=bar' failed on {TAG}b (not running)"


def test_a_config_word_right_after_the_verb_is_refused_not_run_on_another_cluster(cluster_file):
    """`doit pssh config=PATH CMD` reads as naming the cluster file, but the word is the verb's:
    pssh ran `config=PATH CMD` on the cluster of ./cluster.toml. One line, exit 2, nothing run;
    after `--` it is the command's."""
    for verb, rest in (("pssh", ["true"]), ("torture", ["append"]), ("dump", ["b"])):
        run = run_doit(verb, f"config={cluster_file}", *rest)  # no other config=: ./cluster.toml's
        line = one_error_line(run)
        assert run.returncode == 2 and not re.search(r"^\.  ", run.stdout, re.M), run.stdout + run.stderr
        assert line == (f"dali: {verb}: config={cluster_file}: a cluster file goes before the verb or at the end "
                        f"(doit config={cluster_file} {verb} ... or doit {verb} ... config={cluster_file})")
    line = failing(cluster_file, "pssh", "--on", "b", "--", "config=x", "true")
    assert line == f"dali: pssh: 'config=x true' failed on {TAG}b (not running)"


def test_a_config_word_among_the_verbs_words_is_the_verbs(cluster_file):
    """config=PATH before the verb's name names the cluster file; one in the command is the
    command's (doit alone would have taken it for the cluster file)."""
    line = one_error_line(run_doit(f"config={cluster_file}", "pssh", "--on", "b", "env",
                                   "config=/nonexistent/cluster.toml", "true"))
    assert line == f"dali: pssh: 'env config=/nonexistent/cluster.toml true' failed on {TAG}b (not running)"


def test_pssh_options_end_at_the_command_or_at_a_double_dash(cluster_file):
    line = failing(cluster_file, "pssh", "--on", "b", "uname", "-r", "--on", "c")
    assert line == f"dali: pssh: 'uname -r --on c' failed on {TAG}b (not running)"
    line = failing(cluster_file, "pssh", "--timeout", "5", "--on=b", "--", "--version")
    assert line == f"dali: pssh: '--version' failed on {TAG}b (not running)"


def test_pput_takes_its_options_anywhere_and_a_destination_with_an_equals_sign(cluster_file, tmp_path):
    source = tmp_path / "payload"
    source.write_text("x\n")
    line = failing(cluster_file, "pput", str(source), "/root/a=b", "--on", "b")
    assert line == f"dali: pput: pput {source} /root/a=b failed on {TAG}b (not running)"


def test_torture_reads_its_options_anywhere_among_the_workloads(cluster_file):
    for words in (["append", "--seconds", "0", "lock:kind=flock"],
                  ["--seconds", "0", "append", "lock:kind=flock"],
                  ["append", "lock:kind=flock", "--seconds=0"]):
        assert failing(cluster_file, "torture", *words) == \
            "dali: torture: --seconds 0: a run lasts at least 1 second", words
    for words in (["--seconds", "5", "lock:kind=maybe"], ["lock:kind=maybe", "--seconds", "5"]):
        assert "lock:kind=maybe: kind is one of" in failing(cluster_file, "torture", *words), words
    line = failing(cluster_file, "torture", "--", "--seconds", "0")
    assert "no workload '--seconds'" in line, "after --, words are workloads"


def test_the_cluster_file_before_the_verb(cluster_file):
    run = run_doit(f"config={cluster_file}", "torture", "--seconds", "0", "append")
    assert one_error_line(run) == "dali: torture: --seconds 0: a run lasts at least 1 second"
    line = one_error_line(run_doit(f"config={cluster_file}", "dump", "b"))
    assert line == f"dali: dump: {TAG}b not defined: run doit clone first"


def test_a_verb_takes_the_clusters_lock_and_stops_on_ctrl_c(cluster_file):
    """The verb's task runs as any doit does: it waits for the cluster's lock (held here), and
    Ctrl-C ends it with dali's one line and exit 130 (run_until checks both)."""
    lock = REPO / "state" / f"{TAG}.lock"
    lock.parent.mkdir(exist_ok=True)
    held = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        stopped, _ = run_until(types.SimpleNamespace(path=cluster_file), r"^waiting: another doit",
                               signal.SIGINT, 0, "torture", "append", "--seconds", "5")
        assert stopped
    finally:
        os.close(held)
        for leftover in REPO.joinpath("state").glob(f"{TAG}.*"):
            leftover.unlink()


@pytest.mark.parametrize("words, said", [
    (["torture", "--nosuch"], "torture: --nosuch: no such option of doit torture (doit torture --help lists them)"),
    (["torture", "append", "--sekonds", "5"], "torture: --sekonds: no such option of doit torture"),
    (["torture", "append", "--seconds"], "torture: --seconds: expected one argument (doit torture --help"),
    (["torture", "--seconds", "ten"], "torture: --seconds: give a whole number, not 'ten'"),
    (["torture", "--seed", "x", "append"], "torture: --seed: give a whole number, not 'x'"),
    (["torture", "--sec", "5"], "torture: --sec: no such option"),  # no abbreviations
    (["pssh", "--nosuch", "ls"], "pssh: --nosuch: no such option of doit pssh"),
    (["pssh", "--on", "b"], "pssh: doit pssh needs a command: doit pssh [--on b,c]"),
    (["pssh", "--timeout", "soon", "ls"], "pssh: --timeout: give a whole number, not 'soon'"),
    (["pput", "/etc/hostname"], "pput: doit pput needs a source and a destination: doit pput [--on b,c]"),
    (["pput", "a", "b", "c"], "pput: doit pput needs a source and a destination"),
    (["pput", "a", "b", "--on"], "pput: --on: expected one argument"),
    (["dump", "--all"], "dump: --all: no such option of doit dump"),
])
def test_a_mistake_in_the_words_is_one_line_before_any_task(cluster_file, words, said):
    assert refused(cluster_file, *words).startswith(f"dali: {said}")


@pytest.mark.parametrize("verb", VERBS)
def test_help_prints_the_verbs_usage(verb):
    usage = f"usage: doit {verb} "
    for words in ([verb, "--help"], [verb, "-h"], ["help", verb]):
        run = run_doit(*words)
        assert run.returncode == 0 and run.stdout.startswith(usage), (words, run.stdout + run.stderr)
    assert run_doit("help", verb).stdout.strip() == run_doit(verb, "--help").stdout.strip()


def test_the_torture_options_in_its_help():
    text = run_doit("help", "torture").stdout
    for option in ("--on b,c", "--seconds N", "--list", "--script PATH", "--target DIR",
                   "--crash NODE@SECONDS", "--partition NODE@SECONDS+DURATION", "--seed N", "--compare-disk"):
        assert option in text, option


def test_list_and_help_show_the_verbs(cluster_file):
    listed = run_doit("list", f"config={cluster_file}").stdout
    commands = run_doit("help").stdout
    for verb in VERBS:
        assert re.search(rf"^{verb} +\S", listed, re.M), listed
        assert re.search(rf"^  doit {verb} +\S", commands, re.M), commands


def test_torture_list_names_every_workload(cluster_file):
    run = run_doit("torture", "--list", f"config={cluster_file}")
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("namespace", "append", "lock", "mmap", "block", "--script"):
        assert re.search(rf"^{re.escape(name)} +\S", run.stdout, re.M), run.stdout


def test_the_words_typed_after_the_verb():
    """doit hands a command its words without the NAME=VALUE ones; they are put back as typed."""
    from dali import verbs
    argv = ["doit", "-f", "dodo.py", "config=a.toml", "pssh", "echo", "x=1", "pssh", "config=b.toml"]
    assert verbs.typed_after(["echo", "pssh"], argv) == (["config=a.toml", "config=b.toml"],
                                                        ["echo", "x=1", "pssh"])
    assert verbs.typed_after([], ["doit", "dump", "config=c.toml"]) == (["config=c.toml"], [])
    assert verbs.typed_after(["a"], ["doit", "torture", "config=x", "a"]) == ([], ["config=x", "a"])


def test_torture_parses_the_same_whatever_the_order():
    from dali import verbs
    first = verbs.Torture.parse(["--seconds", "60", "--crash=c@5", "--crash", "b@9", "--compare-disk",
                                 "append", "lock:kind=none"])
    among = verbs.Torture.parse(["append", "--seconds", "60", "lock:kind=none", "--crash=c@5",
                                 "--crash", "b@9", "--compare-disk"])
    assert first == among
    assert among.workloads_named == ["append", "lock:kind=none"]
    assert among.seconds == 60 and among.crash == ["c@5", "b@9"] and among.compare_disk


def test_a_task_run_without_its_command_gets_the_defaults():
    """`doit run torture`: the task's option is None, the values those of no words at all."""
    from dali import verbs
    assert verbs.values("dump", None) == {"names": []}
    assert verbs.values("torture", None)["seconds"] is None
    with pytest.raises(DaliError, match="needs a source and a destination"):
        verbs.values("pput", None)


def _main_block(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def test_only_the_verbs_parser_reads_the_command_line():
    """doit's command line is read in one place, dali/verbs.py. sys.argv elsewhere is another
    program's: a module's __main__ block, or the program the nodes run (dali/workloads/guest.py)."""
    readers = set()
    for name, path in structure.modules().items():
        tree = ast.parse(path.read_text())
        in_main = {id(n) for block in ast.walk(tree) if _main_block(block) for n in ast.walk(block)}
        if any(isinstance(n, ast.Attribute) and n.attr == "argv" and isinstance(n.value, ast.Name)
               and n.value.id == "sys" and id(n) not in in_main for n in ast.walk(tree)):
            readers.add(name)
    assert readers == {"dali.verbs", "dali.workloads.guest"}
