"""`doit verify`, before and after it ran on all nodes at once, side by side in one run.

    .venv/bin/python bench/verify.py [N] [BEFORE_REV]   # N nodes per cluster (default 8); ~20 min

Before (BEFORE_REV, default the last commit with the writer-by-writer verify) went writer by
writer: the mount and signature checks on every node before each write, then each of the other
N-1 nodes read the block, one guest command at a time, so its cost grew with N². After: each
step on all nodes at once, and each node reads the others' blocks in one command.

Each side builds and starts its own cluster of N nodes (tags benchvold, benchvnew; isolated
networks) from its own checkout (a cluster belongs to its checkout); both run at once, so both
verify under the same load. Then `doit verify` alternates between them, three rounds. Both
clusters are removed at the end.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from dali.cluster import REPO

import common
from common import say

BEFORE_REV = "ccf93d5"  # verify writer by writer
ROUNDS = 3


def measure(work: Path, nodes: int, before_rev: str, old_tree: Path) -> None:
    sides = [(f"before ({before_rev}, writer by writer)", old_tree,
              common.cluster_file(work, "benchvold", nodes)),
             ("after (all nodes at once)", REPO, common.cluster_file(work, "benchvnew", nodes))]
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TCG guests, two clusters "
        f"of {nodes} nodes running at once; `doit verify` in seconds, median (each round).")
    say()
    try:
        for _, tree, cfg in sides:
            common.doit(cfg, "clone", tree=tree)
        for _, tree, cfg in sides:
            common.doit(cfg, "start", tree=tree)
        took = {label: [] for label, _, _ in sides}
        for _ in range(ROUNDS):
            for label, tree, cfg in sides:
                took[label].append(common.doit(cfg, "verify", tree=tree))
        say(f"| `doit verify`, {nodes} nodes | seconds |")
        say("|---|---:|")
        for label, values in took.items():
            say(f"| {label} | {statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)}) |")
        old, new = (statistics.median(v) for v in took.values())
        say(f"| **speed-up** | **{old / new:.1f}×** |")
    finally:
        for _, tree, cfg in sides:
            common.doit(cfg, "clean", tree=tree, check=False)


if __name__ == "__main__":
    common.before_and_after("verify", 8, BEFORE_REV, measure)
