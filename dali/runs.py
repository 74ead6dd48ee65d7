"""`doit runs` and `doit runs compare A B ...`: the torture runs kept under state/<tag>/runs/,
read back from their run.json as data, listed, and compared side by side (the same torture on
two kernels, say: one row per workload, a column group per run).

A run of `--compare-disk` keeps two halves (nvdimm/, disk/): each is listed and compared as
RUN/nvdimm and RUN/disk. A run.json of an older dali lacks what it did not record; its
cells say "-".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from dali import report_page
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.text import visible_line

HALVES = ("nvdimm", "disk")


class Kept(NamedTuple):
    name: str  # the run's id, or id/nvdimm, id/disk
    path: Path  # its directory
    data: dict  # its run.json

    @property
    def kernels(self) -> str:
        """Its nodes' kernels, each once."""
        kernel = self.data.get("properties", {}).get("kernel", {})
        return ", ".join(dict.fromkeys(kernel.values())) or "-"

    @property
    def verdict(self) -> str:
        return self.data.get("verdict", "-")

    def workloads(self) -> dict[str, dict]:
        """{workload: its line of the summary}; from the raw runs for a run.json of before #29."""
        listed = {w["workload"]: w for w in self.data.get("workloads", [])}
        if listed:
            return listed
        found: dict[str, dict] = {}
        for run in self.data.get("runs", {}).values():
            w = found.setdefault(run["workload"], {"workload": run["workload"], "ops": 0, "violations": 0,
                                                   "verdict": "-", "why": ""})
            result = run.get("result") or {}
            w["ops"] += result.get("ops", 0)
            w["violations"] += sum(result.get("violations", {}).values())
        return found


def kept(cluster: Cluster) -> list[Kept]:
    """Every run kept, oldest first; a directory whose run.json is missing or unreadable (a run
    killed before it wrote it) is passed over."""
    base = cluster.state_dir / "runs"
    out = []
    for path in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else ():
        for name, where in [(path.name, path)] + [(f"{path.name}/{h}", path / h) for h in HALVES]:
            data = _read(where / "run.json")
            if data is not None:
                out.append(Kept(name, where, data))
    return out


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find(runs: list[Kept], given: str) -> Kept:
    """Among the kept runs, the one named exactly, or by the start of its name if only one
    begins so."""
    exact = [r for r in runs if r.name == given]
    if exact:
        return exact[0]
    begins = [r for r in runs if r.name.startswith(given)]
    if len(begins) == 1:
        return begins[0]
    if not begins:
        raise DaliError(f"no kept run {given}: doit runs lists them")
    raise DaliError(f"{given} names {len(begins)} runs ({', '.join(r.name for r in begins[:4])}"
                    f"{', ...' if len(begins) > 4 else ''}): give more of its name")


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def listing(cluster: Cluster) -> str:
    runs = kept(cluster)
    if not runs:
        return f"no torture run kept for {cluster.tag} (doit torture keeps each under {cluster.state_dir / 'runs'})"
    rows = [["run", "started", "workloads", "kernel", "verdict"]]
    for r in runs:
        rows.append([r.name, r.data.get("started", "-"), ",".join(r.workloads()) or "-", r.kernels,
                     _said(r)])
    return "\n".join(visible_line(line) for line in _table(rows))


def _said(r: Kept) -> str:
    expected = sum(1 for w in r.workloads().values() if w.get("verdict") == "expected")
    return r.verdict + (f" ({expected} expected)" if expected else "")


def compare(cluster: Cluster, names: list[str]) -> str:
    """The runs side by side, as text; the same as a page, kept beside them (its path said last)."""
    if len(names) < 2:
        raise DaliError("doit runs compare takes two runs or more: doit runs compare A B (doit runs lists them)")
    every = kept(cluster)  # each run.json read once, however many runs are named
    runs = [find(every, n) for n in names]
    workloads = list(dict.fromkeys(w for r in runs for w in r.workloads()))
    head = ["workload"] + [f"{r.name} ({r.kernels})" for r in runs]
    rows = [head]
    for w in workloads:
        cells = [w]
        for r in runs:
            t = r.workloads().get(w)
            cells.append("not run" if t is None else
                         f"{t['ops']} ops, {t['violations']} violations, {t.get('verdict', '-')}")
        rows.append(cells)
    rows.append(["verdict"] + [r.verdict for r in runs])
    page = cluster.state_dir / "runs" / f"compare-{'-'.join(r.name.replace('/', '_') for r in runs)}.html"
    page.write_text(report_page.compare_runs_page([r.data for r in runs]))
    text = [visible_line(line) for line in _table(rows)]
    return "\n".join(text + [f"kept in {page}"])
