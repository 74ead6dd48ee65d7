"""`doit torture` measured: each workload on the NVDIMM and on a shared disk side by side, and
how long the survivors stall when a node is forced off and when one is cut from the network.

    .venv/bin/python bench/torture.py [ROUNDS]   # default 2 rounds of each; ~20 min

One cluster of three nodes with OCFS2 on the shared device (tag benchtort, isolated network,
under /var/tmp), built and started first, removed at the end. Then, ROUNDS times each:
- `doit torture --compare-disk namespace append lock:kind=flock mmap --seconds 20`: the same
  workloads on the NVDIMM (/data) and on a shared virtio disk (<shareable/>, cache='none',
  the same mkfs.ocfs2, /data-disk), one after the other in the same run; ops/s and violations
  per workload and device. append's violations are OCFS2's own cross-node O_APPEND losses (it
  loses lines on both devices), not the emulation's: the side-by-side shows it.
- `--crash c@5` (forced off, as pulling the plug) during namespace + lock:kind=flock for 20 s:
  how long a and b stalled, and whether the checks held; then `doit start c`.
- `--partition c@5+10` (its link down for 10 s, shorter than o2net's 30 s idle timeout) the
  same way.
The tables go to bench/torture.md.
"""

from __future__ import annotations

import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from dali.cluster import REPO

import common
from common import say

TAG = "benchtort"
SECONDS = "20"


def newest_run(state: Path) -> Path:
    return sorted(p for p in (state / "runs").iterdir() if p.is_dir())[-1]  # not series-*.md


def rows_of(compare_md: str) -> dict[str, list[str]]:
    rows = {}
    for line in compare_md.splitlines()[2:]:
        words = line.split()
        if words:
            rows[words[0]] = words[1:]
    return rows


def stalls_of(report_md: str) -> tuple[dict[str, float], bool]:
    line = next(x for x in report_md.splitlines() if x.startswith("- survivors stalled: "))
    held = "checks hold afterwards" in report_md
    return {n: float(s) for n, s in re.findall(r"(\S+) (\d+\.\d) s", line)}, held


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    work = Path(tempfile.mkdtemp(prefix="dali-bench-torture-", dir="/var/tmp"))
    work.chmod(0o755)
    config = work / f"{TAG}.toml"
    config.write_text(f'tag = "{TAG}"\nclones = ["b", "c"]\ndir = "{work / TAG}"\n'
                      '[network]\nforward = "none"\n[fs]\ntype = "ocfs2"\n[timeouts]\nboot = 1800\n')
    state = REPO / "state" / TAG
    try:
        say("# doit torture: the NVDIMM beside a shared disk, and the survivors' stalls")
        say()
        say(f"Three nodes (1 vCPU, 1 GiB each, TCG, 2 host cores), OCFS2 on both devices, "
            f"{SECONDS} s per run, {rounds} rounds; `python bench/torture.py {rounds}`.")
        took = common.doit(config) + common.doit(config, "start")
        say(f"Built and started in {took:.0f} s.")
        say()
        compare: dict[str, list[list[str]]] = {}
        for _ in range(rounds):
            common.doit(config, "torture", "--compare-disk", "namespace", "append", "lock:kind=flock",
                        "mmap", "--seconds", SECONDS, check=False)  # append loses lines: OCFS2's
            for workload, row in rows_of((newest_run(state) / "compare.md").read_text()).items():
                compare.setdefault(workload, []).append(row)
        say("| workload | NVDIMM ops/s | disk ops/s | NVDIMM violations | disk violations |")
        say("|---|---:|---:|---:|---:|")
        for workload, rows in compare.items():
            med = lambda i: f"{statistics.median(float(r[i]) for r in rows if r[i] != 'not run'):.1f}" \
                if any(r[i] != "not run" for r in rows) else "not run"
            tot = lambda i: "/".join(r[i] for r in rows)
            say(f"| {workload} | {med(0)} | {med(1)} | {tot(2)} | {tot(3)} |")
        say()
        say("ops/s: the median of the rounds; violations: each round's count.")
        say()
        say("| fault | round | survivors' stall (s) | checks afterwards |")
        say("|---|---:|---|---|")
        for fault, args in (("crash c@5", ["--crash", "c@5"]), ("partition c@5+10", ["--partition", "c@5+10"])):
            for r in range(rounds):
                common.doit(config, "torture", "namespace", "lock:kind=flock", "--seconds", SECONDS,
                            *args, check=False)
                stalls, held = stalls_of((newest_run(state) / "report.md").read_text())
                say(f"| {fault} | {r + 1} | {', '.join(f'{n} {s:.1f}' for n, s in sorted(stalls.items()))} | "
                    f"{'hold' if held else 'VIOLATED'} |")
                if fault.startswith("crash"):
                    common.doit(config, "start", "c")
    finally:
        common.doit(config, "clean", check=False)
        shutil.rmtree(work, ignore_errors=True)
    common.write("torture.md")


if __name__ == "__main__":
    main()
