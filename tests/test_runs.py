"""`doit runs` and `doit runs compare`: kept runs read back as data, listed, and compared side
by side (the same torture on two kernels), with runs of an older dali and half-written ones
among them. The real runs on two kernels are in test_torture.py."""

from __future__ import annotations

import json

import pytest

from dali import runs
from dali.errors import DaliError


def keep(cluster, run_id: str, kernel: str, verdicts: dict[str, tuple[int, int, str]], half: str = "") -> None:
    where = cluster.state_dir / "runs" / run_id / half
    where.mkdir(parents=True)
    (where / "run.json").write_text(json.dumps({
        "run_id": run_id, "started": "2026-12-05T20:00:00Z", "verdict": "failed" if any(
            v == "FAILED" for _, _, v in verdicts.values()) else "passed",
        "properties": {"kernel": {"a": kernel, "b": kernel}},
        "workloads": [{"workload": w, "ops": o, "violations": n, "verdict": v, "why": ""}
                      for w, (o, n, v) in verdicts.items()]}))


def test_runs_are_listed_with_their_kernel_and_verdict(config_in):
    keep(config_in, "20261205-200000", "6.1.0-50-amd64", {"append-turns": (40, 20, "expected")})
    keep(config_in, "20261205-201000", "6.12.95+bpo-amd64", {"append-turns": (40, 0, "ok")})
    (config_in.state_dir / "runs" / "20261205-202000").mkdir()  # killed before its run.json
    old = config_in.state_dir / "runs" / "20261205-190000"  # a run.json from before the verdicts
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"runs": {"lock a": {"workload": "lock", "result": {
        "ops": 7, "violations": {"lost update": 2}}}}}))
    lines = runs.listing(config_in).splitlines()
    assert lines[0].split() == ["run", "started", "workloads", "kernel", "verdict"]
    assert [line.split()[0] for line in lines[1:]] == ["20261205-190000", "20261205-200000", "20261205-201000"]
    assert lines[2].split()[2:] == ["append-turns", "6.1.0-50-amd64", "passed", "(1", "expected)"]
    assert lines[1].split()[2:] == ["lock", "-", "-"]


def test_two_runs_side_by_side_per_workload_and_kernel(config_in):
    keep(config_in, "20261205-200000", "6.1.0-50-amd64", {"append-turns": (40, 20, "FAILED"), "lock": (9, 0, "ok")})
    keep(config_in, "20261205-201000", "6.12.95+bpo-amd64", {"append-turns": (40, 0, "ok")})
    text = runs.compare(config_in, ["20261205-2000", "20261205-201"]).splitlines()
    assert "20261205-200000 (6.1.0-50-amd64)" in text[0] and "20261205-201000 (6.12.95+bpo-amd64)" in text[0]
    row = {line.split()[0]: line for line in text[1:]}
    assert "40 ops, 20 violations, FAILED" in row["append-turns"] and "40 ops, 0 violations, ok" in row["append-turns"]
    assert row["lock"].endswith("not run")
    assert row["verdict"].split()[1:] == ["failed", "passed"]
    page = config_in.state_dir / "runs" / "compare-20261205-200000-20261205-201000.html"
    assert text[-1] == f"kept in {page}" and page.exists()


def test_a_compare_disk_run_has_two_halves(config_in):
    keep(config_in, "20261205-200000", "6.1.0-50-amd64", {"lock": (9, 0, "ok")}, half="nvdimm")
    keep(config_in, "20261205-200000", "6.1.0-50-amd64", {"lock": (5, 0, "ok")}, half="disk")
    assert [r.name for r in runs.kept(config_in)] == ["20261205-200000/nvdimm", "20261205-200000/disk"]
    assert "9 ops" in runs.compare(config_in, ["20261205-200000/nvdimm", "20261205-200000/disk"])


@pytest.mark.parametrize("names,error", [
    (["20261205-2"], "takes two runs or more"),
    (["nosuch", "20261205-200000"], "no kept run nosuch: doit runs lists them"),
    (["20261205-20", "20261205-200000"], "20261205-20 names 2 runs"),
])
def test_runs_named_wrongly_are_one_line(config_in, names, error):
    keep(config_in, "20261205-200000", "6.1.0-50-amd64", {"lock": (9, 0, "ok")})
    keep(config_in, "20261205-201000", "6.1.0-50-amd64", {"lock": (9, 0, "ok")})
    with pytest.raises(DaliError, match=error):
        runs.compare(config_in, names)
