"""A test cluster's life, step by step, as the suite and a user repeat it: before and after,
side by side in one run, with a real libvirtd and TCG guests.

    .venv/bin/python bench/cluster.py [BEFORE_REV [ROUNDS]]   # about 15 minutes for 2 rounds; writes bench/cluster.md

"Before" is this project at BEFORE_REV (default: main before this round of issue 17, with the
image built per cluster, the ACPI button pressed every 5 s, OCFS2 set up again at every start),
in a temporary git worktree; "after" is this checkout. Each variant has a three-node cluster
with OCFS2 on the shared device (fs.heartbeat_threshold as the suite sets it). Both first make
the cluster once and clean it, so that what a checkout makes once (the node image, the
initramfs /init) is there for both. Then, alternating between the two, each round times:

1. `doit clone` from nothing: network, FAM, image, the original booted, reconfigured to fsdax
   and shut down, the clones;
2. `doit start`: the first boot of three nodes, OCFS2 formatted and mounted;
3. `doit shutdown` right after;
4. `doit start` again: a restart, OCFS2 mounted by the nodes' own boots;
5. `doit shutdown`, then `doit clean`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import common
from common import say
from dali import settings

BEFORE_REV = "ccf8ccc"  # main at the start of this round: one image per cluster, ...
ROUNDS = 2
STEPS = ("clone", "start", "shutdown", "restart", "clean")


class Variant:
    def __init__(self, label, tree, config):
        self.label, self.tree, self.config = label, tree, config
        self.times: dict[str, list[float]] = {step: [] for step in STEPS}

    def doit(self, *args: str, check: bool = True) -> float:
        return common.doit(self.config, *args, tree=self.tree, check=check)

    def round(self) -> None:
        self.times["clone"].append(self.doit("clone"))
        self.times["start"].append(self.doit("start"))
        self.times["shutdown"].append(self.doit("shutdown"))
        self.times["restart"].append(self.doit("start"))
        self.doit("shutdown")
        self.times["clean"].append(self.doit("clean"))


def with_ocfs2(path):
    path.write_text(path.read_text() + '[fs]\ntype = "ocfs2"\nheartbeat_threshold = 11\n')
    return path


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def measure(work, nodes, rev, old_tree) -> None:
    variants = [Variant(f"before ({rev})", old_tree, with_ocfs2(common.cluster_file(work, "clusterold", nodes))),
                Variant("after", common.REPO, with_ocfs2(common.cluster_file(work, "clusternew", nodes)))]
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TCG guests, {nodes} nodes "
        f"with OCFS2, before = {rev}, after = this checkout. Seconds each step took: the median, "
        "each round in brackets.")
    say()
    try:
        for v in variants:  # what a checkout makes once, made for both
            v.doit("clone")
            v.doit("clean")
        for _ in range(ROUNDS):
            for v in variants:
                v.round()
        say("| | `doit clone` from nothing | `doit start` (first boot, mkfs) | `doit shutdown` | "
            "`doit start` again | `doit clean` |")
        say("|---|---:|---:|---:|---:|---:|")
        for v in variants:
            say(f"| {v.label} | " + " | ".join(median(v.times[s]) for s in STEPS) + " |")
        old, new = variants
        say("| **speed-up** | " + " | ".join(
            f"**{statistics.median(old.times[s]) / statistics.median(new.times[s]):.1f}×**" for s in STEPS) + " |")
    finally:
        for v in variants:
            v.doit("destroy", check=False)
            v.doit("clean", check=False)
            # what clean leaves of a cluster in its checkout's state/ (issue 18)
            cluster = settings.load(v.config, env={}, repo=v.tree)
            for leftover in (cluster.dep_file, cluster.lock_file):
                leftover.unlink(missing_ok=True)


if __name__ == "__main__":
    rev = sys.argv[1] if len(sys.argv) > 1 else BEFORE_REV
    ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else ROUNDS
    sys.argv[1:] = ["3", rev]  # before_and_after reads [NODES] [BEFORE_REV]
    common.before_and_after("cluster", 3, BEFORE_REV, measure)
