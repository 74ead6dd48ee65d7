"""A torture run's report.html: the run as a page to look at, from its run.json.

One page per run (run_page), the NVDIMM beside the shared disk (compare_disk_page), or several
runs side by side, the same torture on two kernels say (compare_runs_page). Each shows a lane
per node: per workload, the operations it completed each second, the faults as vertical lines,
its stall as a shaded band; a node that failed or was a fault's victim stands out.

Everything here turns run.json into plain values (strings and numbers, the SVG's coordinates
worked out); templates/report*.html.j2 lay them out, autoescaped (dali/render.py), so a node's
text is never markup: a kernel line holding '<script>' or '</svg>' shows as those characters.
Text from the nodes is passed through visible_line too, as the terminal gets it: an escape
sequence shows as ^[. The page is whole by itself (inline CSS and SVG, no script, nothing
fetched), and a run.json missing keys (an older run, a node that returned nothing) shows what
it has.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from dali.render import render
from dali.text import visible_line

# The lanes' drawing, in the SVG's own units (it is scaled to the page's width).
WIDTH = 960
LEFT = 180  # the workloads' names and counts
RIGHT = 14
TOP = 30  # the faults' labels, two rows of them
BAND = 46  # one workload's chart
GAP = 8
AXIS = 22
POINTS = 720  # at most this many steps per chart: a week-long run's page stays small

# How a verdict looks, by its words in run.json (in either spelling torture_report has used):
# the words shown, and a CSS class, never taken from the data.
VERDICTS = {"passed": ("passed", "pass"), "ok": ("passed", "pass"),
            "failed": ("FAILED", "fail"),
            "expected failure": ("expected failure", "expected"), "expected": ("expected failure", "expected"),
            "passed (expected to fail: fixed?)": ("passed (expected to fail: fixed?)", "fixed"),
            "fixed?": ("passed (expected to fail: fixed?)", "fixed"),
            "not cluster-wide": ("not cluster-wide", "expected")}
HEALTHY = ("ok", "violations")  # a row's status: anything else marks its node's lane


class Scale(NamedTuple):
    """The axes every lane of a page shares, so lanes (and runs) compare at a glance."""
    span: float  # seconds the time axis covers
    step: int  # seconds per plotted step (a long run's seconds averaged in groups)
    peaks: dict[str, float]  # by workload: the ops/s at the top of its chart


def run_page(run: dict) -> str:
    """report.html of one run."""
    runs = [_run(run)]
    return render("report.html.j2", title=_title(runs[0]), run=_shown(runs[0], _scale(runs)))


def compare_disk_page(nvdimm: dict, disk: dict) -> str:
    """--compare-disk's page: the same workloads on the NVDIMM and on the shared disk."""
    runs = [_run(nvdimm, label="NVDIMM"), _run(disk, label="shared disk")]
    shown = {_verdict(r["verdict"])["class"] for r in runs}
    verdict = "failed" if "fail" in shown else "passed" if shown == {"pass"} else "unknown"
    return _compare_page(runs, title=f"{runs[0]['cluster'] or 'dali'}: NVDIMM and shared disk",
                         verdict=verdict)


def compare_runs_page(runs: list[dict]) -> str:
    """Several runs side by side (the same torture on two kernels): one table, their lanes."""
    shown = [_run(r) for r in runs]
    title = "runs " + ", ".join(r["run_id"] or "?" for r in shown)
    return _compare_page(shown, title=title, verdict=None)


def _compare_page(runs: list[dict], title: str, verdict: str | None) -> str:
    scale = _scale(runs)
    return render("report-compare.html.j2", title=title, verdict=_verdict(verdict) if verdict else None,
                  groups=[_group(r) for r in runs], table=_comparison(runs),
                  runs=[_shown(r, scale) for r in runs])


# --- run.json, as far as it goes ----------------------------------------------------------------

def _run(run: dict, label: str = "") -> dict:
    """The run with every key the page reads, whatever its run.json lacked; text made visible."""
    run = _dict(run)
    rows = _rows(run)
    return {
        "label": label,
        "run_id": _text(run.get("run_id")),
        "cluster": _text(run.get("cluster")),
        "started": _text(run.get("started")),
        "seconds": _number(run.get("seconds")),
        "target": _text(run.get("target")),
        "verdict": _text(run.get("verdict")) or "unknown",
        "properties": _dict(run.get("properties")),
        "workloads": _workloads(run, rows),
        "rows": rows,
        "faults": _faults(run),
        "problems": _texts(run.get("problems")),
        "expected": _texts(run.get("expected")),
        "fixed": _texts(run.get("fixed")),
        "examples": _texts(run.get("examples")),
    }


def _rows(run: dict) -> list[dict]:
    """One per workload and node. A run.json older than "rows" has "runs" (each node's raw
    result): its counts and status, with no timeline or stall."""
    if "rows" in run:
        return [_row(r) for r in _list(run["rows"]) if isinstance(r, dict)]
    raw = [r for r in _dict(run.get("runs")).values() if isinstance(r, dict)]
    return [_row({**r, **_dict(r.get("result"))}) for r in raw]


def _row(row: dict) -> dict:
    stall = _list(row.get("stall"))
    return {
        "workload": _text(row.get("workload")) or "?",
        "node": _text(row.get("node")) or "?",
        "status": _text(row.get("status")) or "unknown",
        "ops": int(_number(row.get("ops"))),
        "violations": {_text(k): int(_number(v)) for k, v in _dict(row.get("violations")).items()},
        "stall": (_number(stall[0]), _number(stall[1])) if len(stall) == 2 else None,
        "timeline": [max(0.0, _number(n)) for n in _list(row.get("timeline"))],
    }


def _workloads(run: dict, rows: list[dict]) -> list[dict]:
    """One per workload, as run.json's "workloads" has it, or summed from the rows (an older
    run: no verdict of its own)."""
    given = [w for w in _list(run.get("workloads")) if isinstance(w, dict)]
    if not given:
        names = list(dict.fromkeys(r["workload"] for r in rows))
        given = [{"workload": name, "ops": sum(r["ops"] for r in rows if r["workload"] == name),
                  "violations": sum(sum(r["violations"].values()) for r in rows if r["workload"] == name)}
                 for name in names]
    out = []
    for w in given:
        ops, elapsed = int(_number(w.get("ops"))), _number(w.get("elapsed"))
        out.append({"workload": _text(w.get("workload")) or "?", "ops": ops,
                    "rate": f"{ops / elapsed:.1f}" if elapsed > 0 else "-",
                    "violations": int(_number(w.get("violations"))),
                    "verdict": _verdict(_text(w.get("verdict"))), "why": _text(w.get("why"))})
    return out


def _faults(run: dict) -> list[tuple[float, str]]:
    faults = [_list(f) for f in _list(run.get("faults"))]
    return [(_number(f[0]), _text(f[1])) for f in faults if len(f) >= 2]


def _verdict(verdict: str) -> dict:
    """A verdict as shown: its words (a failure's in capitals, to be seen from afar) and class;
    one the page does not know, as it came, in grey."""
    text, css = VERDICTS.get(verdict.lower(), (verdict or "-", "other"))
    return {"text": text, "class": css}


# --- what the page shows of a run ---------------------------------------------------------------

def _title(run: dict) -> str:
    return " ".join(filter(None, ("dali torture", run["run_id"], run["cluster"]))) + ": " + _verdict(run["verdict"])["text"]


def _shown(run: dict, scale: Scale) -> dict:
    return {**run, "verdict": _verdict(run["verdict"]), "properties": _properties(run),
            "lanes": [_lane(run, node, scale) for node in _nodes(run)]}


def _nodes(run: dict) -> list[str]:
    """The nodes of the rows (a node that returned nothing has rows too, with empty timelines);
    a run without any rows, those it asked for their kernel, each with an empty lane."""
    nodes = [r["node"] for r in run["rows"]] or [_text(n) for n in _dict(run["properties"].get("kernel"))]
    return sorted(dict.fromkeys(nodes))


def _properties(run: dict) -> list[tuple[str, str]]:
    """(name, value) for the header; what the run did not record is left out."""
    p = run["properties"]
    device = " ".join(filter(None, (_text(p.get("device_mode")), _text(p.get("device_style")))))
    found = [("kernel", "; ".join(_kernels_by_node(p))), ("fs", _text(p.get("fs"))),
             ("stack", _text(p.get("stack"))), ("device", device), ("accel", _text(p.get("accel"))),
             ("seed", _text(p.get("seed"))), ("dali commit", _text(p.get("dali_commit"))),
             ("coherence", _text(p.get("coherence"))), ("count", _text(p.get("count"))),
             ("baseline", _text(p.get("known_failures"))),
             ("target", run["target"]), ("started", run["started"]),
             ("seconds", f"{run['seconds']:g}" if run["seconds"] else "")]
    return [(name, value) for name, value in found if value]


def _kernels_by_node(properties: dict) -> list[str]:
    """'6.1.0-50-amd64 (a, b)': each kernel once, with its nodes."""
    nodes: dict[str, list[str]] = {}
    for node, kernel in _dict(properties.get("kernel")).items():
        nodes.setdefault(_text(kernel) or "?", []).append(_text(node))
    return [f"{kernel} ({', '.join(sorted(ns))})" for kernel, ns in nodes.items()]


def _kernels(run: dict) -> list[str]:
    """The run's kernels, each once (properties.kernel's values)."""
    return list(dict.fromkeys(_text(k) for k in _dict(_dict(run.get("properties")).get("kernel")).values()))


# --- the lanes ----------------------------------------------------------------------------------

def _scale(runs: list[dict]) -> Scale:
    """The time axis long enough for every timeline, fault and stall of the page; each
    workload's chart as high as its busiest second on any node of any run."""
    ends = [1.0]
    for run in runs:
        ends.append(run["seconds"])
        ends += [t for t, _ in run["faults"]]
        for r in run["rows"]:
            ends.append(len(r["timeline"]))
            if r["stall"]:
                ends.append(sum(r["stall"]))
    span = max(ends)
    step = max(1, math.ceil(span / POINTS))
    peaks: dict[str, float] = {}
    for run in runs:
        for r in run["rows"]:
            top = max(_series(r["timeline"], step), default=0.0)
            peaks[r["workload"]] = max(peaks.get(r["workload"], 0.0), top)
    return Scale(span, step, peaks)


def _series(timeline: list[float], step: int) -> list[float]:
    """Operations per second, averaged over each group of step seconds."""
    return [sum(timeline[i:i + step]) / len(timeline[i:i + step]) for i in range(0, len(timeline), step)]


def _x(seconds: float, scale: Scale) -> float:
    return round(LEFT + min(max(seconds, 0.0), scale.span) * (WIDTH - LEFT - RIGHT) / scale.span, 1)


def _lane(run: dict, node: str, scale: Scale) -> dict:
    rows = [r for r in run["rows"] if r["node"] == node]
    order = {w["workload"]: n for n, w in enumerate(run["workloads"])}
    rows.sort(key=lambda r: order.get(r["workload"], len(order)))
    colour = {name: n % 6 for n, name in enumerate(scale.peaks)}  # one colour per workload, on every lane
    bands = [_band(r, TOP + n * (BAND + GAP), scale, colour.get(r["workload"], 0)) for n, r in enumerate(rows)]
    bottom = TOP + max(1, len(rows)) * (BAND + GAP) - GAP
    return {
        "node": node,
        "kernel": _text(_dict(run["properties"].get("kernel")).get(node)),
        "down": [f"{r['workload']}: {r['status']}" for r in rows if r["status"] not in HEALTHY],
        "stalls": [f"{r['workload']} stalled {r['stall'][1]:g} s at {r['stall'][0]:g} s" for r in rows if r["stall"]],
        "bands": bands,
        "faults": _fault_marks(run["faults"], bottom, scale),
        "ticks": _ticks(scale, bottom),
        "bottom": bottom,
        "height": bottom + AXIS,
        "width": WIDTH,
        "left": LEFT,
        "right": WIDTH - RIGHT,
    }


def _band(row: dict, top: float, scale: Scale, colour: int) -> dict:
    """One workload on one node: its step chart, its stall, its state."""
    base = top + BAND
    peak = scale.peaks.get(row["workload"]) or 1.0
    series = _series(row["timeline"], scale.step)
    ys = [round(base - v / peak * (BAND - 6), 1) for v in series]
    line = _steps(ys, scale)
    stall = row["stall"]
    violations = sum(row["violations"].values())
    return {
        "workload": row["workload"],
        "name": _clip(row["workload"], 22),  # the label column's width; the lane's title has it whole
        "top": top, "base": base, "mid": top + BAND / 2,
        "colour": colour,
        "line": line,
        "area": f"{line}V{base}H{_x(0, scale)}Z" if ys else "",
        "peak": _rate(peak) if scale.peaks.get(row["workload"]) else "",  # no scale where no second counted
        "counts": f"{row['ops']} ops" + (f", {violations} violation{'s' * (violations != 1)}" if violations else ""),
        "violations": violations,
        "status": _clip(row["status"], 90),
        "down": row["status"] not in HEALTHY,
        "empty": "" if ys else "nothing returned" if not row["ops"] else "no timeline recorded",
        "stall": ({"x": _x(stall[0], scale), "width": max(1.0, round(_x(sum(stall), scale) - _x(stall[0], scale), 1)),
                   "text": f"stalled {stall[1]:g} s at {stall[0]:g} s"} if stall else None),
        "title": f"{row['workload']} on {row['node']}: {row['ops']} ops, {row['status']}",
    }


def _steps(ys: list[float], scale: Scale) -> str:
    """A step chart's path: each step level across its seconds, then straight to the next."""
    if not ys:
        return ""
    path = [f"M{_x(0, scale)},{ys[0]}"]
    for n, y in enumerate(ys):
        if n:
            path.append(f"V{y}")
        path.append(f"H{_x((n + 1) * scale.step, scale)}")
    return "".join(path)


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"


def _rate(ops_per_second: float) -> str:
    return f"{ops_per_second:.0f}/s" if ops_per_second >= 10 else f"{ops_per_second:.1f}/s"


def _fault_marks(faults: list[tuple[float, str]], bottom: float, scale: Scale) -> list[dict]:
    """A vertical line per fault, its label above the charts; labels alternate between two
    rows so that two faults close together stay readable. A label near the right edge ends at
    its line instead of starting there."""
    marks = []
    for n, (at, label) in enumerate(sorted(faults)):
        x = _x(at, scale)
        right = x > WIDTH - 220
        marks.append({"x": x, "top": 6 + 12 * (n % 2), "bottom": bottom, "label": f"{at:g} s: {label}",
                      "text_x": x - 4 if right else x + 4, "anchor": "end" if right else "start"})
    return marks


def _ticks(scale: Scale, bottom: float) -> list[dict]:
    """Time labels under the charts, at a round number of seconds, about eight of them."""
    every = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400,
                             172800, 604800, float("inf")) if scale.span / s <= 8)
    count = int(scale.span // every) if every != float("inf") else 0
    return [{"x": _x(n * every, scale), "y": bottom + 15, "label": _duration(n * every)} for n in range(count + 1)]


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# --- the comparison table -----------------------------------------------------------------------

def _group(run: dict) -> dict:
    """A run's column group: its name, its run id and kernels, its verdict."""
    return {"label": run["label"] or run["run_id"] or "?",
            "sub": " ".join(filter(None, (run["run_id"] if run["label"] else "", ", ".join(_kernels(run))))),
            "verdict": _verdict(run["verdict"])}


def _comparison(runs: list[dict]) -> list[dict]:
    """One row per workload any run ran, a cell per run (None where that run did not run it)."""
    names = list(dict.fromkeys(w["workload"] for r in runs for w in r["workloads"]))
    by_run = [{w["workload"]: w for w in r["workloads"]} for r in runs]
    return [{"workload": name, "cells": [found.get(name) for found in by_run]} for name in names]


# --- run.json's values, whatever their type -----------------------------------------------------

def _text(value) -> str:
    """A value of run.json as one visible line (what a node said may hold any character)."""
    return "" if value is None else visible_line(str(value))


def _texts(value) -> list[str]:
    return [t for t in (_text(v) for v in _list(value)) if t]


def _number(value) -> float:
    """A count or a time; 0 for what is none (missing, text, NaN, an integer past a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        number = float(value)
    except OverflowError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}
