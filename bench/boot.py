"""Boot speed, before and after, side by side in one run, with a real libvirtd and TCG guests.

    .venv/bin/python bench/boot.py [BEFORE_REV]   # about 20 minutes; prints markdown, writes bench/boot.md

"Before" is this project at BEFORE_REV (default: the last commit before the boot-speed work),
checked out into a temporary git worktree and run with this checkout's venv; "after" is this
checkout. Each builds its own cluster of three nodes (doit clone: its image from its own recipe,
the original, two clones), then, alternating between the two so that both see the same load:

1. one node started, timed to its guest agent's first answer and to `systemctl
   is-system-running --wait` (the boot finished), then shut down; three rounds;
2. three nodes started at once, timed until all three agents answer; two rounds;
3. for one boot of each: `systemd-analyze` (kernel/initrd/userspace) and its `blame` top 8.

Both clusters (tags benchold, benchnew; isolated networks) are removed at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from dali import settings
from dali.cluster import REPO

import common
from common import say
from dali.virt import Libvirt

BEFORE_REV = "14b7c74"  # main before the boot-speed work (issue 11)
ONE_NODE_ROUNDS, THREE_NODE_ROUNDS = 3, 2
WORK = Path(tempfile.mkdtemp(prefix="dali-bench-boot-", dir="/var/tmp"))
class Variant:
    """One checkout of dali and the cluster it builds."""

    def __init__(self, label: str, tree: Path, tag: str):
        self.label, self.tree, self.tag = label, tree, tag
        self.config = WORK / f"{tag}.toml"
        self.config.write_text(f'tag = "{tag}"\nclones = ["b", "c"]\ndir = "{WORK / tag}"\n'
                               '[network]\nforward = "none"\n[timeouts]\nboot = 900\n')
        self.cluster = settings.load(self.config, env={}, repo=tree)
        self.virt = Libvirt("qemu:///system", self.cluster.id)

    def doit(self, *args: str, check: bool = True) -> float:
        return common.doit(self.config, *args, tree=self.tree, check=check)

    def dom(self, suffix: str):
        return self.virt.conn.lookupByName(self.tag + suffix)

    def boot(self, suffixes: str) -> tuple[float, float]:
        """Start these nodes at once: seconds until every agent answers, and until every boot
        has finished (is-system-running --wait returns)."""
        doms = [self.dom(s) for s in suffixes]
        t0 = time.monotonic()
        for dom in doms:
            dom.create()
        waiting = set(range(len(doms)))
        while waiting:
            waiting = {i for i in waiting if not self.virt.agent_answers(doms[i])}
            time.sleep(0.1)
        agents = time.monotonic() - t0
        for dom in doms:
            self.virt.run(dom, ["systemctl", "is-system-running", "--wait"], timeout=900)
        return agents, time.monotonic() - t0

    def shut_down(self) -> None:
        self.doit("shutdown")

    def analyze(self, suffix: str) -> tuple[str, str]:
        dom = self.dom(suffix)
        summary = self.virt.run(dom, ["systemd-analyze"]).stdout.splitlines()[0]
        blame = self.virt.run(dom, ["sh", "-c", "systemd-analyze blame | head -8"]).stdout
        return summary, blame


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def main() -> None:
    WORK.chmod(0o755)
    before_rev = sys.argv[1] if len(sys.argv) > 1 else BEFORE_REV
    try:
        with common.checkout_of(before_rev, WORK / "before") as old_tree:
            measure(before_rev, old_tree)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    common.write("boot.md")


def measure(before_rev: str, old_tree: Path) -> None:
    variants = [Variant(f"before ({before_rev})", old_tree, "benchold"), Variant("after", REPO, "benchnew")]
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TCG guests, "
        f"before = {before_rev}, after = this checkout; median (each round) in seconds.")
    say()
    try:
        for v in variants:
            v.doit("clone")  # image, original, clones: the boots below measure nothing else
            v.shut_down()
        one = {v.label: ([], []) for v in variants}
        analysis = {}
        for round_ in range(ONE_NODE_ROUNDS):
            for v in variants:
                agent, done = v.boot("a")
                one[v.label][0].append(agent)
                one[v.label][1].append(done)
                if round_ == ONE_NODE_ROUNDS - 1:
                    analysis[v.label] = v.analyze("a")
                v.shut_down()
        three = {v.label: [] for v in variants}
        for _ in range(THREE_NODE_ROUNDS):
            for v in variants:
                three[v.label].append(v.boot("abc")[0])
                v.shut_down()

        say("| | one node: to agent | one node: boot finished | three nodes: to all agents |")
        say("|---|---:|---:|---:|")
        for v in variants:
            say(f"| {v.label} | {median(one[v.label][0])} | {median(one[v.label][1])} | "
                f"{median(three[v.label])} |")
        old, new = (variants[0].label, variants[1].label)
        say(f"| **speed-up** | **{statistics.median(one[old][0]) / statistics.median(one[new][0]):.1f}×** | "
            f"**{statistics.median(one[old][1]) / statistics.median(one[new][1]):.1f}×** | "
            f"**{statistics.median(three[old]) / statistics.median(three[new]):.1f}×** |")
        say()
        for label, (summary, blame) in analysis.items():
            say(f"{label}, one node alone: `{summary}`")
            say()
            say("```")
            say(blame.rstrip())
            say("```")
            say()
    finally:
        for v in variants:
            v.doit("clean", check=False)


if __name__ == "__main__":
    main()
