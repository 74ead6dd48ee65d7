"""What a `doit torture` run found, said three ways and kept under state/<tag>/runs/<time>/:

    report.md         the tables: one row per workload, one per workload and node, the faults
                      and each survivor's stall, the violations in words
    junit.xml         one testcase per workload and node, for CI systems
    run.json          everything the nodes returned, for your own scripts
    nodes/<node>/<workload>.out   each node's output
    console/<node>.log            every node's serial console during the run (a node that dies
                                  puts the others into recovery: theirs matter too)

A run fails on any violation, any node that failed or did not finish, and any node whose
console shows a panic, an oops, a BUG, a lockup or OCFS2 fencing, unless that node is a
fault's victim: what happens to the victim is reported, the survivors are judged.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from dali import consoles, evidence, known_failures, report_page
from dali.text import visible_line, xml_safe

SHOWN = 12  # violations printed; report.md has them all


class Status(Enum):
    """How one workload ended on one node: one of these, each said as the report says it."""
    OK = "ok"
    VIOLATIONS = "violations"  # it ran to its end and found some (your script: it exited non-zero)
    FAILED = "failed"  # it, or its check afterwards, did not finish: the detail says why
    FORCED_OFF = "forced off (fault)"  # its node was a --crash victim: what befell it is no failure
    CUT_OFF = "cut off (fault)"  # its node was a --partition victim, and it failed meanwhile

    def said(self, detail: str = "") -> str:
        return f"{self.value}: {detail}" if detail else self.value


class Outcome(NamedTuple):
    """One workload's run on one node, as it ended."""
    node: str
    workload: str
    started: float  # how late it began after the common start (its setup outlasted the lead)
    result: dict | None  # what it returned (workloads.common.Recorder.result); None if it failed
    output: str  # everything it printed
    status: Status
    detail: str = ""  # why it failed: the error, or its exit status and last line

    @classmethod
    def of(cls, node: str, workload: str, result: dict | None, output: str, failure: str) -> "Outcome":
        """From what it returned and printed; failure: why it did not finish ("" if it did)."""
        started = (result or {}).get("late", 0.0)
        if failure:
            return cls(node, workload, started, None, output, Status.FAILED, failure)
        status = Status.VIOLATIONS if result["violations"] else Status.OK
        return cls(node, workload, started, result, output, status)

    def as_json(self) -> dict:
        """Its record in run.json (its output has a file of its own)."""
        return {"node": self.node, "workload": self.workload, "started": self.started,
                "result": self.result, "status": self.status.said(self.detail)}


class Results(NamedTuple):
    """What a run's jobs did, for its report."""
    runs: dict[tuple[str, str], Outcome]  # by (workload, node)
    verdicts: dict  # by workload: its judge's workloads.common.Verdict
    check_errors: dict[tuple[str, str], str]  # (workload, node): why its check after the run failed
    survivors: list[str]  # the nodes still up after the run, which checked
    faults: list[tuple[float, str]]  # (seconds from the start, what happened)
    fault_errors: list[str]
    elapsed: float


class Row(NamedTuple):
    """One workload on one node as the report judges it: a fault's victim told from a failure."""
    workload: str
    node: str
    status: Status
    detail: str
    ops: int
    bytes: int
    elapsed: float
    worst: float
    violations: dict[str, int]  # by kind: its own and its judge's
    examples: list[str]
    notes: dict[str, int]
    stall: tuple[float, float] | None
    output: str
    late: float
    timeline: list[int]  # operations completed in each second from its start

    def said(self) -> str:
        return self.status.said(self.detail)


def _cell(text: str) -> str:
    """Text in a Markdown table's cell: a '|' of it (a node's failing line) would end the cell."""
    return text.replace("|", "\\|")


def _rate(n: float, seconds: float) -> str:
    return f"{n / seconds:.1f}" if seconds > 0 else "-"


class Report:
    def __init__(self, cluster, files, virt, plan, run_id: str, run_dir: Path, known=()):
        self.cluster, self.files, self.virt = cluster, files, virt
        self.plan, self.run_id, self.dir = plan, run_id, run_dir
        self.known = list(known)  # the baseline's entries (dali/known_failures.py)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.kept_workdir = ""
        self.rows: list[Row] = []
        self.summary: list[dict] = []  # one per workload
        self.faults: list[str] = []
        self.problems: list[str] = []  # the failure's reasons, one phrase each
        self.examples: list[str] = []  # the violations of workloads that failed
        self.expected: list[str] = []  # "workload: kind count: why", failing nothing
        self.expected_examples: list[str] = []
        self.fixed: list[str] = []  # "workload: why": expected to fail, it did not
        self.console_findings: dict[str, list[tuple[str, str]]] = {}
        self.crash_dirs: dict[str, Path] = {}
        self.victims = {f.node for f in plan.faults}
        self.crashed = {f.node for f in plan.faults if f.kind == "crash"}

    @property
    def failed(self) -> bool:
        return bool(self.problems)

    def failure_line(self) -> str:
        return f"{visible_line('; '.join(self.problems))}: see {self.dir}/report.md"

    # --- judging ------------------------------------------------------------------------------

    def finish(self, results: Results, windows: dict[str, int]) -> None:
        self.results = results
        self._read_consoles(windows)
        for job in self.plan.jobs:
            self._judge(job)
        self.faults = [f"{what} at {at:g} s" for at, what in results.faults]
        self.problems += [f"fault not injected: {e}" for e in results.fault_errors]

    def _read_consoles(self, windows: dict[str, int]) -> None:
        """Every node's console during the run, kept; a fatal report on a node that is no
        fault's victim fails the run, and its evidence is kept."""
        for name, offset in windows.items():
            text = consoles.since(self.files, name, offset)
            (self.dir / "console").mkdir(exist_ok=True)
            (self.dir / "console" / f"{name}.log").write_bytes(text)
            found = consoles.findings(text)
            if found:
                self.console_findings[name] = found
        run_nodes = [n.name for n, _ in self.plan.nodes]
        for name, found in self.console_findings.items():
            fatal = consoles.fatal(found)
            if fatal and name not in self.victims:
                kept = evidence.keep(self.cluster, self.files, self.virt, name,
                                     f"{fatal[0][0]}: {fatal[0][1]}", under=self.dir)
                if kept is not None:
                    self.crash_dirs[name] = kept
                where = f" (evidence in {kept})" if kept else ""
                self.problems.append(f"{name}: {fatal[0][0]}: {fatal[0][1]}{where}"
                                     if name in run_nodes else
                                     f"{name} (not in the run): {fatal[0][0]}: {fatal[0][1]}{where}")

    def _judge(self, job) -> None:
        """One workload's rows, its line of the summary, and its part of the failure: its
        violations sorted into new ones (they fail the run) and those the baseline or the
        workload itself expects where it ran (listed apart, failing nothing)."""
        verdict = self.results.verdicts.get(job.name)
        first_fault = min((f.at for f in self.plan.faults), default=None)
        rows = [self._row(self.results.runs[(job.name, node.name)], verdict, first_fault)
                for node, _ in self.plan.nodes]
        self.rows += rows
        kinds: dict[str, int] = {}
        for r in rows:
            for kind, n in r.violations.items():
                kinds[kind] = kinds.get(kind, 0) + n
        where = known_failures.Where(self.plan.facts.get("fs", ""), self.plan.facts.get("stack", ""),
                                     tuple(self.plan.facts.get("kernel", {}).values()))
        found = known_failures.sort(kinds, verdict.expected if verdict else {},
                                    known_failures.applying(self.known, job.name, where))
        failed_on = [r.node for r in rows if r.status is Status.FAILED]
        examples = [f"{job.name} {r.node}: {e}" for r in rows for e in r.examples]
        examples += [f"{job.name} {e}" for e in verdict.examples] if verdict else []
        total = {"workload": job.name, "nodes": len(rows), "ops": sum(r.ops for r in rows),
                 "bytes": sum(r.bytes for r in rows), "violations": sum(kinds.values()),
                 "worst": max([0.0] + [r.worst for r in rows]),
                 "elapsed": max([0.0] + [r.elapsed for r in rows])}
        if found.new or failed_on:
            total["verdict"], total["why"] = "FAILED", ""
            if found.new:
                self.problems.append(f"{job.name}: {sum(found.new.values())} violation(s) (" +
                                     ", ".join(f"{k}: {n}" for k, n in sorted(found.new.items())) + ")")
            if failed_on:
                self.problems.append(f"{job.name} failed on {', '.join(failed_on)}")
            self.examples += examples
        elif found.expected:
            why = "; ".join(sorted({w for _, w in found.expected.values()}))
            total["verdict"], total["why"] = "expected", why
            self.expected += [f"{job.name}: {k}: {n}, expected: {w}" for k, (n, w) in sorted(found.expected.items())]
            self.expected_examples += examples
        elif found.fixed:
            total["verdict"], total["why"] = "fixed?", "; ".join(k.reason for k in found.fixed)
            self.fixed += [f"{job.name}: passed, but the baseline expects it to fail: {k.reason}"
                           for k in found.fixed]
        else:
            total["verdict"], total["why"] = "ok", ""
        self.summary.append(total)

    def _row(self, run: Outcome, verdict, first_fault: float | None) -> Row:
        result = run.result or {}
        kinds = dict(result.get("violations", {}))
        for kind, count in (verdict.by_node.get(run.node, {}) if verdict else {}).items():
            kinds[kind] = kinds.get(kind, 0) + count
        status, detail = self._ended(run)
        stall = self._stall(run, first_fault) if run.node not in self.victims else None
        return Row(run.workload, run.node, status, detail, result.get("ops", 0), result.get("bytes", 0),
                   result.get("elapsed", 0.0), result.get("max_latency", 0.0), kinds,
                   result.get("examples", []), result.get("notes", {}), stall, run.output,
                   result.get("late", 0.0), result.get("timeline", []))

    def _ended(self, run: Outcome) -> tuple[Status, str]:
        """How it ended, judged: a check that failed afterwards fails it too; a fault's victim
        that failed did what the fault made it do."""
        status, detail = run.status, run.detail
        check_error = self.results.check_errors.get((run.workload, run.node))
        if check_error is not None:
            status, detail = Status.FAILED, check_error
        if status is Status.FAILED and run.node in self.crashed:
            return Status.FORCED_OFF, ""
        if status is Status.FAILED and run.node in self.victims:
            return Status.CUT_OFF, detail
        return status, detail

    @staticmethod
    def _stall(run: Outcome, first_fault: float | None) -> tuple[float, float] | None:
        """The longest stall of this node's operations that ended after the first fault: when
        (seconds from the run's start) and how long. None without faults or stalls."""
        if first_fault is None or not run.result:
            return None
        best = None
        for start, length in run.result["stalls"]:
            at = run.started + start
            if at + length >= first_fault and (best is None or length > best[1]):
                best = (round(at, 1), length)
        return best or (round(first_fault, 1), 0.0)

    # --- saying it ----------------------------------------------------------------------------

    def _tables(self) -> list[str]:
        lines = ["| workload | nodes | ops | violations | ops/s | MiB/s | worst op (s) | verdict |",
                 "|---|---:|---:|---:|---:|---:|---:|---|"]
        for t in self.summary:
            lines.append(f"| {t['workload']} | {t['nodes']} | {t['ops']} | {t['violations']} | "
                         f"{_rate(t['ops'], t['elapsed'])} | {_rate(t['bytes'] / 2**20, t['elapsed'])} | "
                         f"{t['worst']:.3f} | {t['verdict']} |")
        return lines

    def _node_table(self) -> list[str]:
        lines = ["| workload | node | status | ops | violations | worst op (s) | stall after the fault |",
                 "|---|---|---|---:|---|---:|---|"]
        for r in self.rows:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.violations.items())) or "0"
            stall = f"{r.stall[1]:.1f} s from {r.stall[0]:g} s" if r.stall else "-"
            lines.append(f"| {r.workload} | {r.node} | {_cell(r.said())} | {r.ops} | {kinds} | "
                         f"{r.worst:.3f} | {stall} |")
        return lines

    def _survivors_lines(self) -> list[str]:
        if not self.plan.faults:
            return []
        stalls = {}
        for r in self.rows:
            if r.stall:
                stalls[r.node] = max(stalls.get(r.node, 0.0), r.stall[1])
        held = "hold" if not any(t["violations"] for t in self.summary) else "do NOT hold"
        return [f"faults: {'; '.join(self.faults) or 'none happened'}",
                "survivors stalled: " + (", ".join(f"{n} {s:.1f} s" for n, s in sorted(stalls.items()))
                                         or "-"),
                f"the workloads' checks {held} afterwards (checked on "
                f"{', '.join(self.results.survivors) or 'no node'})"]

    def text(self) -> str:
        """What doit torture prints: what the nodes said shown as visible_line shows it."""
        p = self.plan
        head = (f"torture run {self.run_id}: {', '.join(j.name for j in p.jobs)} on "
                f"{len(p.nodes)} node(s) for {p.seconds:g} s against {p.target} (seed {p.seed})")
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in self._tables()
                 if not line.startswith("|---")]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        last = len(widths) - 1
        lines = [head, ""] + ["  ".join(c.ljust(w) if i in (0, last) else c.rjust(w)
                                        for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                              for row in cells]
        for r in self.rows:
            if r.status not in (Status.OK, Status.VIOLATIONS):
                lines.append(f"{r.node} {r.workload}: {visible_line(r.said())}")
            elif r.late >= 1:
                lines.append(f"{r.node} {r.workload}: began {r.late:.1f} s after the others "
                             "(its setup outlasted the common start)")
        lines += self._survivors_lines()
        for name, found in self.console_findings.items():
            lines.append(f"{name} console: " + "; ".join(f"{k}: {visible_line(line)}"
                                                         for k, line in found[:3]))
        if self.examples:
            lines.append("violations:")
            lines += [f"  {visible_line(e)}" for e in self.examples[:SHOWN]]
            if len(self.examples) > SHOWN:
                lines.append(f"  ... {len(self.examples) - SHOWN} more in report.md")
        if self.expected:
            lines.append(f"expected failures ({self._baseline_said()}):")
            lines += [f"  {visible_line(e)}" for e in self.expected]
        lines += [f"fixed? {visible_line(e)}" for e in self.fixed]
        if self.kept_workdir:
            lines.append(f"work directory {self.kept_workdir}")
        lines.append(f"kept in {self.dir}; to look at: {self.dir / 'report.html'}")
        return "\n".join(lines)

    def _baseline_said(self) -> str:
        path = self.cluster.known_failures
        return f"torture.known_failures = {path}" if path else "known to the workload where it ran"

    def markdown(self) -> str:
        p = self.plan
        out = [f"# torture run {self.run_id}", "",
               f"Cluster {self.cluster.tag}; nodes {', '.join(n.name for n, _ in p.nodes)}; "
               f"target {p.target}; {p.seconds:g} s; seed {p.seed}; "
               f"result **{'FAILED' if self.failed else 'passed'}**.", ""]
        out += self._tables() + [""] + self._node_table() + [""]
        out += [f"- {line}" for line in self._survivors_lines()]
        for name, why in p.not_run:
            out.append(f"- {name} did not run: {why}")
        for name, found in self.console_findings.items():
            out += [f"- {name} console: {k}: `{line}`" for k, line in found]
        for name, path in self.crash_dirs.items():
            out.append(f"- {name}: evidence kept in {path}")
        if self.problems:
            out += ["", "## Why it failed", ""] + [f"- {x}" for x in self.problems]
        if self.examples:
            out += ["", "## Violations", ""] + [f"- {e}" for e in self.examples]
        if self.expected or self.fixed:
            out += ["", f"## Expected failures ({self._baseline_said()})", ""]
            out += [f"- {e}" for e in self.expected] + [f"- fixed? {e}" for e in self.fixed]
            out += [f"- {e}" for e in self.expected_examples]
        return "\n".join(out) + "\n"

    def properties(self) -> dict:
        """What the run ran on (torture._facts), with where it ran and its baseline."""
        return {**self.plan.facts, "target": self.plan.target, "seconds": self.plan.seconds,
                "known_failures": str(self.cluster.known_failures or "")}

    def junit(self) -> str:
        """One testcase per workload and node; what the nodes said, as XML can hold it."""
        suite = ET.Element("testsuite", name=f"dali torture {self.run_id}", tests=str(len(self.rows)))
        props = ET.SubElement(suite, "properties")  # as fstests' result.xml: what it ran on
        for name, value in self.properties().items():
            for key, v in (value.items() if isinstance(value, dict) else [(None, value)]):
                ET.SubElement(props, "property", name=f"{name}.{key}" if key else name,
                              value=xml_safe(str(v)))
        verdicts = {t["workload"]: t for t in self.summary}
        failures = 0
        for r in self.rows:
            case = ET.SubElement(suite, "testcase", classname=xml_safe(f"torture.{r.workload}"),
                                 name=r.node, time=f"{r.elapsed:.3f}")
            bad = sum(r.violations.values())
            expected = verdicts.get(r.workload, {}).get("verdict") == "expected"
            if bad and expected:  # as pytest writes an xfail: skipped, with why
                ET.SubElement(case, "skipped", type="expected failure", message=xml_safe(
                    "expected failure: " + verdicts[r.workload]["why"]))
            elif bad or r.status is Status.FAILED:
                failures += 1
                message = (f"{bad} violation(s): " + ", ".join(f"{k} {v}" for k, v in r.violations.items())
                           if bad else r.said())
                failure = ET.SubElement(case, "failure", message=xml_safe(message))
                failure.text = xml_safe("\n".join(r.examples))
            elif r.status is not Status.OK:
                ET.SubElement(case, "skipped", message=xml_safe(r.said()))
            ET.SubElement(case, "system-out").text = xml_safe(r.output[-20000:])
        suite.set("failures", str(failures))
        return ET.tostring(suite, encoding="unicode", xml_declaration=True)

    @staticmethod
    def side_by_side(nvdimm: "Report", disk: "Report") -> str:
        """The same workloads on the NVDIMM and on the shared disk: is it the device or the
        filesystem? One row per workload, the two devices next to each other."""
        on_disk = {t["workload"]: t for t in disk.summary}
        rows = [["workload", "NVDIMM ops/s", "disk ops/s", "NVDIMM violations", "disk violations",
                 "NVDIMM worst op (s)", "disk worst op (s)", "NVDIMM verdict", "disk verdict"]]
        for t in nvdimm.summary:
            d = on_disk.get(t["workload"])
            rows.append([t["workload"], _rate(t["ops"], t["elapsed"]),
                         _rate(d["ops"], d["elapsed"]) if d else "not run",
                         str(t["violations"]), str(d["violations"]) if d else "-",
                         f"{t['worst']:.3f}", f"{d['worst']:.3f}" if d else "-",
                         t["verdict"], d["verdict"] if d else "-"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        text = [f"side by side: {nvdimm.plan.target} (NVDIMM) and {disk.plan.target} (shared disk)"]
        text += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        return "\n".join(text)

    def write_and_print(self) -> None:
        for r in self.rows:
            out = self.dir / "nodes" / r.node
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{r.workload}.out").write_text(r.output)
        (self.dir / "report.md").write_text(self.markdown())
        (self.dir / "junit.xml").write_text(self.junit())
        (self.dir / "run.json").write_text(json.dumps(self.as_json(), indent=1))
        (self.dir / "report.html").write_text(report_page.run_page(self.as_json()))
        print(self.text())

    @property
    def verdict(self) -> str:
        return "failed" if self.failed else "passed"

    def as_json(self) -> dict:
        """run.json: what `doit runs` lists and compares, report.html draws, and your scripts
        read (the keys are documented in docs/torture.md)."""
        raw = {f"{w} {n}": run.as_json() for (w, n), run in self.results.runs.items()}
        return {
            "run_id": self.run_id, "cluster": self.cluster.tag, "started": self.started,
            "seconds": self.plan.seconds, "target": self.plan.target, "verdict": self.verdict,
            "properties": self.properties(),
            "workloads": [{k: t[k] for k in ("workload", "ops", "violations", "elapsed", "verdict", "why")}
                          for t in self.summary],
            "rows": [{"workload": r.workload, "node": r.node, "status": r.said(), "ops": r.ops,
                      "violations": r.violations, "late": r.late,
                      "stall": list(r.stall) if r.stall else None, "timeline": r.timeline}
                     for r in self.rows],
            "faults": self.results.faults, "problems": self.problems, "expected": self.expected,
            "fixed": self.fixed, "examples": self.examples + self.expected_examples,
            "runs": raw, "survivors": self.results.survivors,
            "verdicts": {w: {"by_node": v.by_node, "examples": v.examples, "expected": v.expected}
                         for w, v in self.results.verdicts.items()}}
