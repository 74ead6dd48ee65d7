"""The no-op `doit` at 16 nodes, before and after, beside the import floor, in one run.

    .venv/bin/python bench/noop.py [N] [BEFORE_REV]   # N nodes per cluster (default 16); ~3 min

The floor is what Python takes just to import doit, libvirt and jinja2
(`python -c "import doit, libvirt, jinja2"`): no doit run can take less. The target (#11) is a
no-op `doit` within 1.5x of it at 16 nodes.

Each side builds its own cluster of N shut-off nodes (tags benchnold, benchnnew; isolated
networks) from its own checkout (a cluster belongs to its checkout): BEFORE_REV (default, the
last commit before the no-op work) and this checkout. Both trees' modules are byte-compiled
first, as a user's are after their first run (this bench may run with PYTHONDONTWRITEBYTECODE
set). Then the floor, the before and the after no-op alternate, ROUNDS times; medians are
compared. Both clusters are removed at the end.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dali.cluster import REPO

import common
from common import say

BEFORE_REV = "76e687c"  # before: 48 domain XMLs per no-op, dataclasses, uuid, ctypes
ROUNDS = 25  # the machine is shared: one run's spread is ±20%
PYTHON = str(REPO / ".venv/bin/python")


def measure(work: Path, nodes: int, before_rev: str, old_tree: Path) -> None:
    sides = {f"before ({before_rev})": (old_tree, common.cluster_file(work, "benchnold", nodes)),
             "after": (REPO, common.cluster_file(work, "benchnnew", nodes))}
    for tree in [old_tree, REPO]:
        subprocess.run([PYTHON, "-m", "compileall", "-q", "dodo.py", "dali", "tasks"], cwd=tree,
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / ".venv/lib")], stdout=subprocess.DEVNULL)
    try:
        with ThreadPoolExecutor() as pool:  # both clusters built at once: their originals boot once
            list(pool.map(lambda side: common.doit(side[1], tree=side[0]), sides.values()))
        timings = {"floor": [], **{name: [] for name in sides}}
        for name, (tree, cfg) in sides.items():
            common.doit(cfg, tree=tree)  # the first no-op may still write doit's records
        for _ in range(ROUNDS):
            timings["floor"].append(common.import_floor())
            for name, (tree, cfg) in sides.items():
                timings[name].append(common.doit(cfg, tree=tree))
        base = statistics.median(timings["floor"])
        say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores: a no-op `doit` on "
            f"{nodes} shut-off nodes, {ROUNDS} rounds alternating with the floor, "
            "`python -c 'import doit, libvirt, jinja2'`.")
        say()
        say("| | median s | fastest s | median / floor |")
        say("|---|---:|---:|---:|")
        for name, values in timings.items():
            say(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | "
                f"{statistics.median(values) / base:.2f} |")
    finally:
        for tree, cfg in sides.values():
            common.doit(cfg, "clean", tree=tree, check=False)


if __name__ == "__main__":
    common.before_and_after("noop", 16, BEFORE_REV, measure)
