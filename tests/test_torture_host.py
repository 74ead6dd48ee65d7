"""doit torture's host side without guests: the plan's refusals, the fault injector on domains
that only record what they are asked, and the run loop and its report on nodes whose agent is
a fake (what each node "printed" chosen by the test). What a user sees: the lines printed, the
one line a refusal is, a link brought up again, files a machine can read."""

from __future__ import annotations

import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from dali import faults, known_failures, torture
from dali.cluster import REPO
from dali.errors import DaliError
from dali.torture_report import Outcome, Report, Results, Status
from dali.virt import ExecResult
from dali.workloads.common import Verdict
from dali.workloads.guest import RESULT
from support.cluster import unique_tag
from support.doit import one_error_line, run_doit


# --- fakes ---------------------------------------------------------------------------------------

class Domain:
    """A running libvirt domain that records what it is asked: its link's state, a destroy."""

    def __init__(self, name: str, interface: bool = True):
        self._name, self.interface = name, interface
        self.link, self.destroyed = "up", False

    def name(self) -> str:
        return self._name

    def XMLDesc(self, _flags=0) -> str:
        iface = f"<interface type='network'><link state='{self.link}'/></interface>" if self.interface else ""
        return f"<domain><name>{self._name}</name><devices>{iface}</devices></domain>"

    def updateDeviceFlags(self, xml: str, _flags) -> None:
        self.link = ET.fromstring(xml).find("link").get("state")

    def destroy(self) -> None:
        self.destroyed = True

    def isActive(self) -> bool:
        return not self.destroyed


class Consoles:
    """The part of a cluster's Storage a report reads: each node's console log."""

    def __init__(self, logs: dict[str, bytes]):
        self.logs = logs

    def console_log(self, name: str) -> str:
        return name

    def size(self, path: str) -> int:
        return len(self.logs.get(path, b""))

    def read(self, path: str, start: int, size: int) -> bytes:
        return self.logs[path][start:start + size]


def result(**values) -> dict:
    """What a workload's run returns (workloads.common.Recorder.result), as the test wants it."""
    return {"ops": 10, "late": 0.0, "bytes": 0, "elapsed": 5.0, "max_latency": 0.1, "stalls": [],
            "violations": {}, "examples": [], "notes": {}, "state": {}, **values}


def plan_of(cluster, jobs: list[str], **values) -> torture.Plan:
    nodes = [(n, Domain(n.name)) for n in cluster.nodes[:2]]
    return torture.Plan([torture.Job(name, torture.CHECKERS[name], {}, None) for name in jobs], [], nodes,
                        "/data", "dir", 5.0, [], None, 7)._replace(**values)


def report_of(cluster, tmp_path, p: torture.Plan, runs: list[Outcome], logs: dict[str, bytes],
              verdicts: dict | None = None, known: bool = False) -> Report:
    """The report of a run whose jobs ended as `runs` say, the nodes' consoles holding `logs`;
    known: with the checkout's baseline (known-failures.toml)."""
    virt = SimpleNamespace(domain=lambda name: None)  # a node gone: no memory to keep
    baseline = known_failures.load(REPO / "known-failures.toml") if known else []
    report = Report(cluster, Consoles(logs), virt, p, "test", tmp_path, baseline)
    report.finish(Results({(r.workload, r.node): r for r in runs},
                          verdicts or {j.name: Verdict() for j in p.jobs}, {},
                          [n.name for n, _ in p.nodes], [], [], 5.0),
                  {name: 0 for name in logs})
    return report


# --- what the nodes printed, as the terminal gets it --------------------------------------------

def test_what_the_nodes_printed_reaches_the_terminal_visible_and_the_files_as_it_came(config_in, tmp_path,
                                                                                      capsys):
    a, b = (n.name for n in config_in.nodes[:2])
    p = plan_of(config_in, ["namespace"])
    runs = [Outcome(a, "namespace", 0.0, None, "", Status.FAILED, "exit 1: \x1b]0;owned\x07OSError: gone"),
            Outcome.of(b, "namespace", result(violations={"lost": 1},
                                              examples=["\x1b[2Jo1-3 lost\nforged line"]), "", "")]
    report = report_of(config_in, tmp_path, p, runs,
                       {a: b"", b: b"[ 9.0] Kernel panic - not syncing: \x1b[31mred\r\n"})
    report.write_and_print()
    printed = capsys.readouterr().out
    assert f"{a} namespace: failed: exit 1: ^[]0;owned^GOSError: gone\n" in printed
    assert f"{b} console: panic: Kernel panic - not syncing: ^[[31mred\n" in printed
    assert f"  namespace {b}: ^[[2Jo1-3 lost | forged line\n" in printed
    assert "\x1b" not in printed and "\x07" not in printed
    assert report.failure_line() == (f"{b}: panic: Kernel panic - not syncing: ^[[31mred; namespace: 1 "
                                     f"violation(s) (lost: 1); namespace failed on {a}: see {tmp_path}/report.md")
    assert "`Kernel panic - not syncing: \x1b[31mred`" in (tmp_path / "report.md").read_text()
    kept = json.loads((tmp_path / "run.json").read_text())["runs"][f"namespace {a}"]
    assert kept["status"] == "failed: exit 1: \x1b]0;owned\x07OSError: gone"


def test_junit_is_xml_whatever_the_nodes_printed(config_in, tmp_path, capsys):
    a, b = (n.name for n in config_in.nodes[:2])
    p = plan_of(config_in, ["append"])
    runs = [Outcome(a, "append", 0.0, None, "out\x00put \x1b[0m\n", Status.FAILED, "exit 1: \x00\x1b[1m"),
            Outcome.of(b, "append", result(), "fine\n", "")]
    report = report_of(config_in, tmp_path, p, runs,
                       {a: b"[ 1.0] BUG: \x00\x1b[2J at fs/x.c:1\n", b: b""})
    report.write_and_print()
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")}
    assert cases[a].find("failure").get("message") == "failed: exit 1: ^@^[[1m"
    assert cases[a].find("system-out").text == "out^@put ^[[0m\n"
    assert cases[b].find("failure") is None and cases[b].find("system-out").text == "fine\n"
    assert (tmp_path / "nodes" / a / "append.out").read_text() == "out\x00put \x1b[0m\n", "kept as it came"


# --- the plan's refusals ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def no_cluster(tmp_path_factory):
    """A cluster file on libvirt's in-memory test driver, where no node runs."""
    where = tmp_path_factory.mktemp("torture")
    path = where / "cluster.toml"
    path.write_text(f'uri = "test:///default"\ntag = "{unique_tag("tort")}"\ndir = "{where / "data"}"\n')
    return path


def test_a_run_longer_than_a_week_is_one_line(no_cluster):
    line = one_error_line(run_doit("torture", "--seconds", "100000000000", f"config={no_cluster}"))
    assert line == "dali: torture: --seconds 100000000000: a run lasts at most 604800 s (a week): give fewer"


def test_a_script_named_like_a_workload_is_one_line(no_cluster, tmp_path):
    script = tmp_path / "append"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    line = one_error_line(run_doit("torture", "append", "--script", str(script), f"config={no_cluster}"))
    assert line == (f"dali: torture: --script {script}: named like the workload append, which the "
                    "report could not tell it from: rename the script (or run a copy, say my-append)")


@pytest.mark.parametrize("word,key", [("block:blocks=²", "blocks"), ("namespace:files=٣", "files")])
def test_a_parameter_in_other_digits_is_one_line(word, key):
    with pytest.raises(DaliError) as refused:
        torture._parse_workload(word)
    assert str(refused.value) == f"{word}: {key} must be a whole number of at least 1"


def test_a_partition_longer_than_a_week_is_one_line():
    with pytest.raises(DaliError) as refused:
        faults.parse("partition", "c@5+99999999999", lambda n: n, 30)
    assert str(refused.value) == ("--partition c@5+99999999999: a partition lasts at most 604800 s "
                                  "(a week): give a shorter DURATION")


@pytest.mark.parametrize("typed", ["/data/", "/data/.", "//data", "/data//"])
def test_the_mountpoint_however_it_is_typed_is_checked_for_its_mount(config_in, typed):
    node = config_in.nodes[0]
    where, kind = torture._target(config_in, typed)
    p = torture.Plan([], [], [(node, Domain(node.name))], where, kind, 10.0, [], None, 7)
    virt = SimpleNamespace(run=lambda dom, argv, **_: ExecResult(1 if argv[0] == "mountpoint" else 0, "", ""))
    with pytest.raises(DaliError) as refused:
        torture._check_target(config_in, None, virt, p)
    assert str(refused.value) == f"{node.name}: /data is not mounted: doit start {node.name} mounts it"


@pytest.mark.parametrize("typed", ["/data/../etc", "/data/.."])
def test_a_target_that_climbs_is_one_line(config_in, typed):
    with pytest.raises(DaliError) as refused:
        torture._target(config_in, typed)
    assert str(refused.value) == f"--target {typed}: give an absolute path on the nodes, without spaces or '..'"


# --- the fault injector ------------------------------------------------------------------------

def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


def test_a_partition_too_long_for_the_clock_fails_the_run_and_the_link_comes_back():
    """faults.parse refuses it now; the injector must survive one all the same (a wait longer
    than threading.TIMEOUT_MAX raises OverflowError): no thread dies silently with a link down."""
    c = Domain("c")
    injector = faults.Injector([faults.Fault("partition", "c", 0.0, 1e11)], {"c": c})
    injector.start(time.monotonic())
    wait_until(lambda: len(injector.happened) == 2)  # not at the run's end: the injector stopped
    injector.finish()
    assert c.link == "up"
    assert [what for _, what in injector.happened] == ["c link down", "c link up"]
    assert len(injector.errors) == 1 and injector.errors[0].startswith(
        "injecting the faults stopped: OverflowError: "), injector.errors


def test_a_fault_that_fails_stops_no_other():
    b, c = Domain("b", interface=False), Domain("c")
    injector = faults.Injector([faults.Fault("partition", "b", 0.0, 1.0), faults.Fault("crash", "c", 0.1, 0.0)],
                               {"b": b, "c": c})
    injector.start(time.monotonic())
    wait_until(lambda: c.destroyed)
    injector.finish()
    assert [what for _, what in injector.happened] == ["c forced off"]
    assert injector.errors == ["b: down: b has no network interface to cut"]


# --- one run loop for every workload, your script too --------------------------------------------

class Nodes:
    """The run's libvirt: every node answers; what each command prints is the test's."""

    def __init__(self, answers):
        self.answers = answers
        self.lock = threading.Lock()

    def agent(self, dom, command, **_):
        return int(time.time() * 1e9)  # guest-get-time: the host's clock

    def run(self, dom, argv, **_) -> ExecResult:
        return self.answers(dom.name(), argv)

    def is_running(self, dom) -> bool:
        return True

    def agent_answers(self, dom) -> bool:
        return True


def test_a_script_and_a_checker_run_through_one_loop_and_are_reported_alike(config_in, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.setattr(torture, "LEAD", 0.0)
    monkeypatch.setattr(torture, "LEAD_PER_JOB", 0.0)
    a, b = (n.name for n in config_in.nodes[:2])
    script = tmp_path / "probe.sh"
    judged = {}
    fake = SimpleNamespace(NAME="fake", DOC="", NEEDS=("dir",), PARAMS={},
                           judge=lambda ctx, runs, checks: judged.update(runs=runs, checks=checks) or Verdict())

    def answers(node, argv):
        if argv == [torture.SCRIPT]:
            return ExecResult(3 if node == b else 0, f"hello from {node}\n", "")
        what = argv[2]  # python3 PROGRAM run|check-all ARGS
        if what == "run" and node == b:
            return ExecResult(1, "", "Traceback (most recent call last):\nOSError: [Errno 5] EIO\n")
        returned = result(state={"node": node}) if what == "run" else [{"result": {"saw": node}}]
        return ExecResult(0, RESULT + json.dumps(returned) + "\n", "")
    virt = Nodes(answers)
    p = plan_of(config_in, [])._replace(jobs=[torture.Job("fake", torture.Checker(fake), {}, None),
                                              torture.Job("probe.sh", torture.Script(script), {}, None)])
    report = Report(config_in, Consoles({}), virt, p, "test", tmp_path)
    monkeypatch.setattr(torture, "_tidy", lambda *args: None)  # nothing on a filesystem here
    report.finish(torture._execute(virt, p, "test", report), {})
    report.write_and_print()
    printed = capsys.readouterr().out
    assert judged == {"runs": {a: {"node": a}, b: None}, "checks": {a: {"saw": a}, b: {"saw": b}}}
    assert f"{b} fake: failed: exit 1: OSError: [Errno 5] EIO\n" in printed
    assert f"  probe.sh {b}: {torture.SCRIPT} exited 3\n" in printed
    assert report.failure_line() == f"fake failed on {b}; probe.sh: 1 violation(s) (exit 3: 1): see {tmp_path}/report.md"
    assert (tmp_path / "nodes" / a / "probe.sh.out").read_text() == f"hello from {a}\n"
    runs = json.loads((tmp_path / "run.json").read_text())["runs"]
    assert {key: r["status"] for key, r in runs.items()} == {
        f"fake {a}": "ok", f"fake {b}": "failed: exit 1: OSError: [Errno 5] EIO",
        f"probe.sh {a}": "ok", f"probe.sh {b}": "violations"}


def recording(name: str, judged: dict) -> torture.Checker:
    """A checker of its own name whose judge keeps the checks it is given, in judged[name]."""
    module = SimpleNamespace(NAME=name, DOC="", NEEDS=("dir",), PARAMS={},
                             judge=lambda ctx, runs, checks: judged.update({name: checks}) or Verdict())
    return torture.Checker(module)


def test_a_nodes_checks_are_one_python3_and_one_that_fails_fails_its_workload_alone(config_in, tmp_path,
                                                                                   monkeypatch, capsys):
    """Three checkers and a script on two nodes: each node starts python3 once to check, for the
    three checkers in the run's order (the script has nothing to check). The second one's check
    failing on b fails that row alone, said as a check's failure always was; every other
    check reaches its judge, b's included."""
    monkeypatch.setattr(torture, "LEAD", 0.0)
    monkeypatch.setattr(torture, "LEAD_PER_JOB", 0.0)
    monkeypatch.setattr(torture, "_tidy", lambda *args: None)
    a, b = (n.name for n in config_in.nodes[:2])
    asked = {a: [], b: []}

    def answers(node, argv):
        asked[node].append(argv)
        if argv == [torture.SCRIPT]:
            return ExecResult(0, "", "")
        if argv[2] == "run":
            return ExecResult(0, RESULT + json.dumps(result(state={"node": node})) + "\n", "")
        said = [{"error": "OSError: [Errno 5] Input/output error"} if (node, job["workload"]) == (b, "two")
                else {"result": {"saw": node}} for job in json.loads(argv[3])]
        return ExecResult(0, RESULT + json.dumps(said) + "\n", "")
    virt = Nodes(answers)
    judged = {}
    p = plan_of(config_in, [])._replace(jobs=[torture.Job(n, recording(n, judged), {}, None)
                                              for n in ("one", "two", "three")]
                                        + [torture.Job("probe.sh", torture.Script(tmp_path / "probe.sh"), {}, None)])
    report = Report(config_in, Consoles({}), virt, p, "test", tmp_path)
    report.finish(torture._execute(virt, p, "test", report), {})
    report.write_and_print()

    for node, index in ((a, 0), (b, 1)):
        checks = [argv for argv in asked[node] if argv[:3] == ["python3", torture.PROGRAM, "check-all"]]
        assert len(checks) == 1, asked[node]
        assert [(job["workload"], job["name"], job["index"]) for job in json.loads(checks[0][3])] == [
            ("one", node, index), ("two", node, index), ("three", node, index)]
        assert len([argv for argv in asked[node] if argv[0] == "python3"]) == 4, "three runs, one check"
    assert judged == {"one": {a: {"saw": a}, b: {"saw": b}}, "two": {a: {"saw": a}, b: None},
                      "three": {a: {"saw": a}, b: {"saw": b}}}
    why = f"{b}: checking two failed: OSError: [Errno 5] Input/output error"
    assert f"{b} two: failed: {why}\n" in capsys.readouterr().out
    assert report.failure_line() == f"two failed on {b}: see {tmp_path}/report.md"
    rows = json.loads((tmp_path / "run.json").read_text())["rows"]  # each run as judged
    assert {(r["workload"], r["node"]): r["status"] for r in rows} == {
        **{(n, node): "ok" for n in ("one", "two", "three", "probe.sh") for node in (a, b)},
        ("two", b): f"failed: {why}"}


@pytest.mark.parametrize("answer,why", [
    (ExecResult(-1, "", ""), "checking WORKLOAD failed: no output"),  # killed: no result, nothing said
    (ExecResult(1, "", "Traceback (most recent call last):\nMemoryError\n"),
     "checking WORKLOAD failed: MemoryError"),
    (ExecResult(0, RESULT + '[{"result": {}}]\n', ""),
     "checking WORKLOAD failed: " + RESULT.strip() + ' [{"result": {}}]'),
])
def test_a_nodes_check_that_fails_as_a_whole_fails_each_of_its_workloads(config_in, answer, why):
    """Its python3 killed, failing before the checks, or printing a list that is not one answer
    per workload: each workload's check on that node fails, named, with what it said last; the
    other node's checks count."""
    a, b = config_in.nodes[:2]
    virt = Nodes(lambda node, argv: answer if node == b.name else ExecResult(
        0, RESULT + json.dumps([{"result": {"saw": node}}] * 2) + "\n", ""))
    p = plan_of(config_in, ["namespace", "lock"])
    checked, errors = torture._check_all(virt, p, "test", [(i, n, d) for i, (n, d) in enumerate(p.nodes)])
    assert checked == {("namespace", a.name): {"saw": a.name}, ("namespace", b.name): None,
                       ("lock", a.name): {"saw": a.name}, ("lock", b.name): None}
    assert errors == {(w, b.name): f"{b.name}: " + why.replace("WORKLOAD", w) for w in ("namespace", "lock")}


def test_a_garbled_result_is_that_nodes_failure_not_the_runs_end():
    """A node's output mangled (a kernel under test, a console line cut in): no result, so that
    node's run failed with its output, where json.loads ended the whole run as a bug."""
    from dali.torture import _parse_result
    assert _parse_result(RESULT + '{"ops": 3, "viol') is None
    assert _parse_result(RESULT + "[1, 2]") is None
    assert _parse_result("noise\n" + RESULT + '{"ops": 3}\n') == {"ops": 3}


# --- known failures: what the baseline expects, and what a stack does by design ---------------

def on_ocfs2(p: torture.Plan, kernel: str = "6.1.0-50-amd64") -> torture.Plan:
    return p._replace(facts={"kernel": {n.name: kernel for n, _ in p.nodes}, "fs": "ocfs2", "stack": "o2cb",
                             "seed": 7, "dali_commit": "abc", "accel": "tcg"})


def test_only_known_failures_pass_the_run_and_are_listed_apart(config_in, tmp_path, capsys):
    """The shipped baseline knows OCFS2's lost appends on Debian's 6.1: the run passes, the
    append row says "expected", its lines are listed under the baseline's name; junit.xml has
    them as skipped (as pytest writes an xfail) and carries what the run ran on."""
    a, b = (n.name for n in config_in.nodes[:2])
    p = on_ocfs2(plan_of(config_in, ["append"]))
    runs = [Outcome.of(a, "append", result(), "", ""), Outcome.of(b, "append", result(), "", "")]
    lost = Verdict()
    lost.add(a, "lost", "1288 of its 1289 acknowledged lines are missing", 1288)
    report = report_of(config_in, tmp_path, p, runs, {}, {"append": lost}, known=True)
    report.write_and_print()
    printed = capsys.readouterr().out
    assert not report.failed
    assert re.search(r"^append +2 +20 +1288 .* expected$", printed, re.M), printed
    assert f"expected failures (torture.known_failures = {REPO}/known-failures.toml):\n" in printed
    assert "  append: lost: 1288, expected: OCFS2 appends at the node's cached i_size" in printed
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["kernel." + a] == "6.1.0-50-amd64" and props["fs"] == "ocfs2" and props["seed"] == "7"
    skipped = [c.find("skipped") for c in suite.iter("testcase") if c.get("name") == a][0]
    assert skipped.get("message").startswith("expected failure: OCFS2 appends")
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["verdict"] == "passed" and saved["workloads"][0]["verdict"] == "expected"


def test_a_new_failure_beside_a_known_one_fails_the_run_naming_it(config_in, tmp_path):
    a, b = (n.name for n in config_in.nodes[:2])
    p = on_ocfs2(plan_of(config_in, ["append"]))
    runs = [Outcome.of(a, "append", result(), "", ""), Outcome.of(b, "append", result(), "", "")]
    v = Verdict()
    v.add(a, "lost", "lost lines", 5)
    v.add(b, "torn", "a torn line", 1)
    report = report_of(config_in, tmp_path, p, runs, {}, {"append": v}, known=True)
    assert report.failed and report.failure_line().startswith("append: 1 violation(s) (torn: 1): see ")


def test_the_known_failure_on_another_kernel_is_new(config_in, tmp_path):
    a, b = (n.name for n in config_in.nodes[:2])
    p = on_ocfs2(plan_of(config_in, ["append"]), kernel="6.12.95+bpo-amd64")
    runs = [Outcome.of(a, "append", result(), "", ""), Outcome.of(b, "append", result(), "", "")]
    v = Verdict()
    v.add(a, "lost", "lost lines", 5)
    assert report_of(config_in, tmp_path, p, runs, {}, {"append": v}, known=True).failed


def test_a_known_failure_that_did_not_happen_says_fixed(config_in, tmp_path, capsys):
    a, b = (n.name for n in config_in.nodes[:2])
    p = on_ocfs2(plan_of(config_in, ["append"]))
    runs = [Outcome.of(a, "append", result(), "", ""), Outcome.of(b, "append", result(), "", "")]
    report = report_of(config_in, tmp_path, p, runs, {}, None, known=True)
    print(report.text())
    assert not report.failed
    assert "fixed? append: passed, but the baseline expects it to fail: OCFS2 appends" in capsys.readouterr().out


def test_fcntl_on_o2cb_is_not_cluster_wide_by_itself(config_in, tmp_path, capsys):
    """No baseline: the lock workload's judge knows o2cb keeps POSIX locks node-local."""
    from dali.workloads import lock
    from dali.workloads.common import Context
    a, b = (n.name for n in config_in.nodes[:2])
    ctx = Context({"workload": "lock", "target": "/data", "kind": "dir", "index": 0, "nodes": 2, "name": a,
                   "seconds": 5, "seed": 7, "run_id": "t", "params": {"kind": "both"}, "stack": "o2cb"})
    seen = {"seen": {"fcntl": {"total": 15, "counts": [10, 5]}, "flock": {"total": 20, "counts": [10, 10]}}}
    states = {a: {"made": {"fcntl": 10, "flock": 10}}, b: {"made": {"fcntl": 10, "flock": 10}}}
    verdict = lock.judge(ctx, states, {a: seen, b: seen})
    assert verdict.by_node == {b: {"fcntl not cluster-wide": 5}}
    p = on_ocfs2(plan_of(config_in, ["lock"]))
    runs = [Outcome.of(n, "lock", result(), "", "") for n in (a, b)]
    report = report_of(config_in, tmp_path, p, runs, {}, {"lock": verdict})
    print(report.text())
    assert not report.failed
    assert "lock: fcntl not cluster-wide: 5, expected: fcntl locks are not cluster-wide on this stack" \
        in capsys.readouterr().out
    ctx.stack = ""
    assert lock.judge(ctx, states, {a: seen, b: seen}).by_node == {b: {"lost update": 5}}, \
        "on another stack it is a lost update"
