"""The workloads of doit torture, without guests: each runs as the nodes run it (the zip file,
python3, one process per "node") on this host, where a directory or a file is trivially
coherent between processes. A healthy run finds nothing; each broken case (no lock, node-local
directories, a line or a block changed behind the checkers' backs, a node that died) is found.
The same programs on real guests: test_torture.py and test_living.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dali import consoles, faults, torture, workloads
from dali.errors import DaliError
from dali.virt import ExecResult
from dali.workloads.common import Context
from dali.workloads.guest import RESULT


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pyz") / "torture.pyz"
    path.write_bytes(workloads.zipapp())
    return path


def imported_from(program: Path) -> str:
    """Where python3 took workloads.guest from, as the nodes import it out of the zip."""
    return subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "import workloads.guest; print(workloads.guest.__file__)", str(program)],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_nodes_import_the_bytecode_shipped_and_fall_back_on_the_source(program, tmp_path):
    """Bytecode compiled on the host, so that no node compiles the package at each start; a
    Python with another bytecode format (another magic number) runs the source instead."""
    assert imported_from(program) == f"{program}/workloads/guest.pyc"
    foreign = tmp_path / "foreign.pyz"
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(foreign, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            out.writestr(info, b"\0\0\r\n" + data[4:] if info.filename.endswith(".pyc") else data)
    assert imported_from(foreign) == f"{foreign}/workloads/guest.py"
    run = subprocess.run([sys.executable, str(foreign), "run", json.dumps(args("namespace", tmp_path, 0, 1))],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and RESULT in run.stdout, run


def args(name, target, index, nodes, params=None, kind="dir", area=None, seconds=0.5):
    module = workloads.WORKLOADS[name]
    return {"workload": name, "target": str(target), "kind": kind, "index": index, "nodes": nodes,
            "name": f"n{index}", "seconds": seconds, "seed": 7, "run_id": "test",
            "params": {**module.PARAMS, **(params or {})}, "area": area}


def run_all(program, name, targets, **kw) -> dict:
    """Every "node" at once; {node: result}."""
    procs = {f"n{i}": subprocess.Popen([sys.executable, str(program), "run",
                                        json.dumps(args(name, t, i, len(targets), **kw))],
                                       stdout=subprocess.PIPE, text=True)
             for i, t in enumerate(targets)}
    out = {}
    for node, p in procs.items():
        text = p.communicate(timeout=60)[0]
        assert p.returncode == 0, text
        out[node] = json.loads(text.split(RESULT)[1])
    return out


def check_all(program, name, targets, **kw) -> dict:
    """Every "node"'s check of one workload, as a node checks: `check-all`; {node: what it saw}."""
    out = {}
    for i, t in enumerate(targets):
        r = subprocess.run([sys.executable, str(program), "check-all",
                            json.dumps([args(name, t, i, len(targets), **kw)])],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        [entry] = json.loads(r.stdout.split(RESULT)[1])
        assert "result" in entry, entry
        out[f"n{i}"] = entry["result"]
    return out


class LocalNodes:
    """torture's libvirt for "nodes" that are this host: each command run here, python3 being
    this Python and the program the zip built here; every command line kept, by node."""

    def __init__(self, program: Path):
        self.program, self.asked = program, {}

    def run(self, dom, argv, **_):
        self.asked.setdefault(dom, []).append(argv)
        argv = [sys.executable if a == "python3" else str(self.program) if a == torture.PROGRAM else a
                for a in argv]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        return ExecResult(r.returncode, r.stdout, r.stderr)


def test_one_python3_checks_every_workload_and_one_that_fails_fails_alone(program, tmp_path):
    """A node checks the run's workloads in one python3; append's file gone, its check fails on
    each node with the line a python3 of its own said (its traceback's last line), and the
    others' checks still count: their judges find nothing, as checked one by one."""
    targets, names = [tmp_path] * 2, ["namespace", "append", "lock"]
    runs = {name: run_all(program, name, targets) for name in names}
    appended = tmp_path / ".dali-torture-test" / "append" / "file"
    appended.unlink()
    virt = LocalNodes(program)
    said = {f"n{i}": torture._check_node(virt, f"n{i}", [args(name, t, i, 2) for name in names])
            for i, t in enumerate(targets)}
    assert {node: [argv[:3] for argv in asked] for node, asked in virt.asked.items()} == {
        node: [["python3", torture.PROGRAM, "check-all"]] for node in said}, "one python3 per node"
    for node, (namespace, append, lock) in said.items():
        assert append == (f"{node}: checking append failed: FileNotFoundError: [Errno 2] "
                          f"No such file or directory: '{appended}'")
        assert namespace == check_all(program, "namespace", targets)[node]
        assert lock == check_all(program, "lock", targets)[node]
    for name, at in (("namespace", 0), ("lock", 2)):
        checks = {node: answers[at] for node, answers in said.items()}
        assert violations(runs[name], judge(name, targets, runs[name], checks)) == {}, name


def test_a_node_whose_python3_fails_as_a_whole_fails_each_check_with_its_last_line(program, tmp_path):
    """No list printed (a program that dies, here one that cannot be read): every check of the
    node fails, each named, with what it printed last."""
    virt = LocalNodes(tmp_path / "not-there.pyz")
    said = torture._check_node(virt, "n0", [args(name, tmp_path, 0, 1) for name in ("namespace", "lock")])
    assert len(said) == 2 and all(isinstance(why, str) for why in said), said
    assert said[0].startswith("n0: checking namespace failed: ") and said[1].startswith("n0: checking lock failed: ")
    assert "not-there.pyz" in said[0], said


def judge(name, targets, runs, checks, **kw):
    ctx = Context(args(name, targets[0], 0, len(targets), **kw))
    return workloads.WORKLOADS[name].judge(ctx, {n: r["state"] if r else None for n, r in runs.items()}, checks)


def violations(runs, verdict) -> dict:
    found = {}
    for r in runs.values():
        for kind, n in (r or {}).get("violations", {}).items():
            found[kind] = found.get(kind, 0) + n
    for kinds in verdict.by_node.values():
        for kind, n in kinds.items():
            found[kind] = found.get(kind, 0) + n
    return found


@pytest.mark.parametrize("name,params", [("namespace", {}), ("append", {}), ("append-turns", {}),
                                         ("lock", {}), ("mmap", {})])
def test_a_healthy_directory_shows_no_violation(program, tmp_path, name, params):
    targets = [tmp_path] * 3
    runs = run_all(program, name, targets, params=params)
    assert all(r["ops"] > 0 for r in runs.values())
    verdict = judge(name, targets, runs, check_all(program, name, targets, params=params), params=params)
    assert violations(runs, verdict) == {}, verdict.examples


def test_lock_without_a_lock_loses_updates(program, tmp_path):
    params = {"kind": "none"}
    runs = run_all(program, "lock", [tmp_path] * 3, params=params)
    verdict = judge("lock", [tmp_path] * 3, runs, check_all(program, "lock", [tmp_path] * 3, params=params),
                    params=params)
    assert violations(runs, verdict).get("lost update", 0) > 0


def test_namespace_on_node_local_directories_disagrees(program, tmp_path):
    targets = [tmp_path / f"local{i}" for i in range(3)]  # what each node sees is only its own
    for t in targets:
        t.mkdir()
    runs = run_all(program, "namespace", targets)
    verdict = judge("namespace", targets, runs, check_all(program, "namespace", targets))
    assert violations(runs, verdict).get("disagree", 0) > 0


def test_append_finds_a_lost_and_a_torn_line(program, tmp_path):
    targets = [tmp_path] * 2
    runs = run_all(program, "append", targets)
    path = tmp_path / ".dali-torture-test" / "append" / "file"
    data = bytearray(path.read_bytes())
    data[64:128] = b""  # one line gone
    data[0:10] = b"garbage!!!"  # one line torn
    path.write_bytes(bytes(data))
    found = violations(runs, judge("append", targets, runs, check_all(program, "append", targets)))
    assert found.get("lost") == 2 and found.get("torn") == 2, found  # one of each, seen by 2 nodes


def test_namespace_finds_a_lost_file_and_one_that_came_back(program, tmp_path):
    targets = [tmp_path] * 2
    runs = run_all(program, "namespace", targets)
    workdir = tmp_path / ".dali-torture-test" / "namespace"
    own = sorted(runs["n0"]["state"]["own"])
    os.unlink(workdir / own[0])
    (workdir / "o1-999").write_bytes(b"dali o1-999.v1 0\n")
    found = violations(runs, judge("namespace", targets, runs, check_all(program, "namespace", targets)))
    assert found.get("lost") == 2 and found.get("resurrected") == 1, found


def test_a_dead_node_is_judged_by_what_the_others_agree_on(program, tmp_path):
    targets = [tmp_path] * 3
    runs = run_all(program, "lock", targets)
    checks = check_all(program, "lock", targets)
    runs["n2"] = None  # it died: its own tally is lost with it
    del checks["n2"]
    assert violations({}, judge("lock", targets, runs, checks)) == {}


def test_block_on_a_file_finds_a_changed_block(program, tmp_path):
    device = tmp_path / "device"
    area = (0, workloads.block.area_size(2, workloads.block.PARAMS))
    device.write_bytes(bytes(area[1]))
    targets = [device] * 2
    runs = run_all(program, "block", targets, kind="block", area=area)
    assert all(r["ops"] > 0 for r in runs.values())
    checks = check_all(program, "block", targets, kind="block", area=area)
    verdict = judge("block", targets, runs, checks, kind="block", area=area)
    assert violations(runs, verdict) == {}
    with open(device, "r+b") as f:
        os.pwrite(f.fileno(), b"X" * 4096, 2 * 4096)  # a data block of the first region
    checks = check_all(program, "block", targets, kind="block", area=area)
    found = violations(runs, judge("block", targets, runs, checks, kind="block", area=area))
    assert found.get("torn") == 2, found


def test_mmap_finds_a_mapping_that_shows_an_old_round(program, tmp_path):
    targets = [tmp_path] * 2
    runs = run_all(program, "mmap", targets)
    mapped = tmp_path / ".dali-torture-test" / "mmap" / "mapped"
    with open(mapped, "r+b") as f:
        os.pwrite(f.fileno(), (2).to_bytes(8, "little"), 0)  # round 1: the writer did many more
    found = violations(runs, judge("mmap", targets, runs, check_all(program, "mmap", targets)))
    assert found.get("stale") == 2, found


def test_consoles_name_each_report_once():
    text = ("[  1.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
            "[  1.1] Oops: 0002 [#1] PREEMPT SMP NOPTI\n"
            "[ 120.0] INFO: task kworker/0:1:33 blocked for more than 120 seconds.\n"
            "[ 240.0] INFO: task kworker/0:1:33 blocked for more than 241 seconds.\n"
            "[ 300.0] Kernel panic - not syncing: Fatal exception\n"
            "[ 301.0] kernel BUG at fs/ocfs2/dlmglue.c:3361!\n"
            "root@ivpa:~# echo BUG: is just a word in a shell\n")
    found = consoles.findings(text)
    assert [k for k, _ in found] == ["BUG", "oops", "hung task", "panic", "BUG"], found  # not the echo
    assert [k for k, _ in consoles.fatal(found)] == ["BUG", "oops", "panic", "BUG"]
    assert found[0][1] == "BUG: kernel NULL pointer dereference, address: 0000000000000008"


@pytest.mark.parametrize("kind,spec,error", [
    ("crash", "c", "give NODE@SECONDS"),
    ("crash", "c@40", "not within the run's 30 s"),
    ("partition", "c@5", r"give NODE@SECONDS\+DURATION"),
    ("partition", "c@5+0", "more than 0 s"),
])
def test_a_bad_fault_is_one_line(kind, spec, error):
    with pytest.raises(DaliError, match=error):
        faults.parse(kind, spec, lambda n: n, 30)


def test_fault_times_and_nodes():
    assert faults.parse("partition", "b@2.5+10", lambda n: "ivp" + n, 30) == \
        faults.Fault("partition", "ivpb", 2.5, 10.0)
    with pytest.raises(DaliError, match="forced off at 3 s already"):
        faults.check_plan([faults.Fault("crash", "ivpb", 3, 0), faults.Fault("partition", "ivpb", 5, 2)])


def test_workload_parameters_are_checked():
    assert torture._parse_workload("lock:kind=flock")[2] == {"kind": "flock"}
    assert torture._parse_workload("namespace:files=4,racers=2")[2] == {"files": 4, "racers": 2}
    for bad, error in [("nosuch", "no workload 'nosuch'"), ("lock:kind=maybe", "kind is one of"),
                       ("append:line=0", "at least 1"), ("append:size=9", "append takes line=")]:
        with pytest.raises(DaliError, match=error):
            torture._parse_workload(bad)


def test_a_file_half_written_by_a_node_that_died_is_no_violation(program, tmp_path):
    targets = [tmp_path] * 3
    runs = run_all(program, "namespace", targets)
    workdir = tmp_path / ".dali-torture-test" / "namespace"
    (workdir / ".t2-999").write_bytes(b"dali h2-999 5000\nonly the start")  # n2 died writing it
    checks = check_all(program, "namespace", targets)
    assert violations(runs, judge("namespace", targets, runs, checks)).get("torn") == 3, \
        "while n2 lives, a half-written file is torn, on every node"
    runs["n2"] = None
    del checks["n2"]
    assert "torn" not in violations(runs, judge("namespace", targets, runs, checks))


def test_append_turns_plays_whole_rounds_in_turn_order(program, tmp_path):
    """Three "nodes" on one local directory (a filesystem whose appends are right): every round
    file holds a, b, c, a's lines in that order, and each node wrote its turns."""
    runs = run_all(program, "append-turns", [tmp_path] * 3, seconds=1.0)
    checks = check_all(program, "append-turns", [tmp_path] * 3)
    rounds = checks["n0"]["rounds"]
    assert len(rounds) >= 1 and all(r["state"]["stopped"] == "" for r in runs.values())
    for r, lines in rounds.items():
        assert lines == [[0, int(r), 0], [1, int(r), 1], [2, int(r), 2], [0, int(r), 3]], lines
    assert sorted(runs["n0"]["state"]["wrote"]) == sorted([int(r), t] for r in rounds for t in (0, 3))
    assert sum(runs["n0"]["timeline"]) == runs["n0"]["ops"] == 2 * len(rounds)


def test_append_turns_names_the_overwritten_lines():
    """What OCFS2 on 6.1 leaves (docs/findings/ocfs2-append.md): b's append at its cached size 0
    over a's first line, c's over b's; a's second at its own cached size."""
    runs = {"a": {"wrote": [[0, 0], [0, 3]], "stopped": ""}, "b": {"wrote": [[0, 1]], "stopped": ""},
            "c": {"wrote": [[0, 2]], "stopped": ""}}
    seen = {"rounds": {"0": [[2, 0, 2], [0, 0, 3]]}, "garbled": {"0": 0}}
    v = judge("append-turns", ["/x"] * 3, {n: {"state": s} for n, s in runs.items()},
              {"a": seen, "b": seen, "c": seen})
    assert v.by_node == {"a": {"overwritten": 1}, "b": {"overwritten": 1}}
    assert any("round 0: its line of turn 0 is gone (the file holds turns [2, 3])" in e for e in v.examples)
