"""What the coherence plugin's page memory saves: the same 3-node checked cluster (devdax,
strict) with this checkout's plugin, which remembers which pages are the FAM's as a TLB does
(dali/coherence/c/plugin.c), and with BEFORE_REV's, which asked QEMU where every load and store
landed; side by side in one run, with a real libvirtd and TCG guests.

    .venv/bin/python bench/pages.py [NODES] [BEFORE_REV]   # about 12 minutes for 2 rounds; writes bench/pages.md

BEFORE_REV (default 5f6452d, the commit before the page memory) is checked out beside this
checkout and builds its own plugin in its own copy of the checked QEMU (bench/common.py); each
checkout has its own cluster (tags benchpg0, benchpg1; isolated networks). Both are built, then,
alternating so that both see the same load, each round: `doit start` (every node booted and
usable), `doit verify` (every node writes and reads the shared device), `doit torture --seconds
20 mmap block` (operations in 20 s, more is faster), `doit shutdown`. Last, what this
checkout's plugin counted of its own check: pages asked again, and those found stale.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import common
from common import say

from dali import settings
from dali.cluster import REPO
from dali.coherence import model

BEFORE_REV = "5f6452d"
ROUNDS = 2


class Variant:
    def __init__(self, label: str, work: Path, tag: str, nodes: int, tree: Path):
        self.label, self.tree = label, tree
        self.config = common.cluster_file(work, tag, nodes)
        with open(self.config, "a") as f:
            f.write('[device]\nstyle = "native"\nmode = "devdax"\ncoherence = "strict"\n')
        self.times: dict[str, list[float]] = {"start": [], "verify": []}
        self.ops: dict[str, list[int]] = {}

    def doit(self, *args: str, check: bool = True) -> float:
        return common.doit(self.config, *args, tree=self.tree, check=check)

    def torture(self) -> None:
        for workload, ops in common.torture_ops(self.config, ("mmap", "block"), 20, tree=self.tree).items():
            self.ops.setdefault(workload, []).append(ops)


def measure(work: Path, nodes: int, rev: str, old_tree: Path) -> None:
    before = Variant(f"asked every access ({rev})", work, "benchpg0", nodes, old_tree)
    after = Variant("page memory (this checkout)", work, "benchpg1", nodes, REPO)
    say("# The coherence plugin's page memory: what it saves")
    say()
    say(f"{nodes} nodes each, devdax, strict, TCG, {ROUNDS} rounds, the two clusters alternating.")
    try:
        for v in (before, after):
            v.doit()  # built once: image, clones, the plugin of its checkout
        for _ in range(ROUNDS):
            for v in (before, after):
                v.times["start"].append(v.doit("start"))
                v.times["verify"].append(v.doit("verify"))
                v.torture()
                v.doit("shutdown")
        say()
        say(f"| | {before.label} | {after.label} | |")
        say("|---|---:|---:|---:|")
        for what in ("start", "verify"):
            a, b = statistics.median(before.times[what]), statistics.median(after.times[what])
            say(f"| `doit {what}` (s) | {a:.1f} | {b:.1f} | {a / b:.2f}x faster |")
        for workload in sorted(set(before.ops) | set(after.ops)):
            a = statistics.median(before.ops.get(workload, [0]))
            b = statistics.median(after.ops.get(workload, [0]))
            say(f"| torture {workload}: operations in 20 s | {a:.0f} | {b:.0f} | "
                f"{(b / a if a else float('inf')):.2f}x more |")
        counted = model.counters(settings.load(after.config, env={}).coherence_model)[:nodes]
        say()
        say(f"This checkout's plugins asked QEMU again about {sum(c['pages_rechecked'] for c in counted)} "
            f"remembered pages (one hit in 4096) and found {sum(c['pages_stale'] for c in counted)} stale.")
    finally:
        for v in (before, after):
            v.doit("destroy", check=False)
            v.doit("clean", check=False)


if __name__ == "__main__":
    common.before_and_after("pages", 3, BEFORE_REV, measure, own=("qemu-coherence",))
