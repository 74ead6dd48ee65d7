"""Boot speed as a user waits for it: `doit start` until it returns with ssh working, before and
after, side by side in one run, with a real libvirtd and TCG guests.

    .venv/bin/python bench/boot.py [BEFORE_REV [ROUNDS]]   # about 25 minutes for 3 rounds; writes bench/boot.md

"Before" is this project at BEFORE_REV (default: main before the work of issue 17), checked out
into a temporary git worktree and run with this checkout's venv; "after" is this checkout. Each
builds its own cluster of three nodes (doit clone: its image, the original, two clones), then,
alternating between the two so that both see the same load, each round:

1. `doit reset:disks` (every node's disk as right after cloning: never booted), then
   `doit start b`: a clone's first boot; then one `ssh b true` with the generated ssh_config,
   timed on its own: ssh works when doit start returns, and this is what the first command
   waits for while the rest of the boot goes on;
2. `doit shutdown b`, `doit start b`: its next boot;
3. `doit shutdown`, `doit reset:disks`, `doit start`: three fresh clones, as the user types it
   (each variant's own default batching).

Then, for one next boot of each: `systemd-analyze` and its `blame` top 8. Both clusters (tags
benchold, benchnew; isolated networks) are removed at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dali import settings
from dali.cluster import REPO

import common
from common import say
from dali.virt import Libvirt

BEFORE_REV = "2ce5aca"  # main before issue 17 (identity disk, socket-activated sshd, ...)
ROUNDS = 3  # bench/boot.py [BEFORE_REV [ROUNDS]]
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
        self.times: dict[str, list[float]] = {"first": [], "ssh": [], "next": [], "three": []}

    def doit(self, *args: str, check: bool = True) -> float:
        return common.doit(self.config, *args, tree=self.tree, check=check)

    def ssh(self, suffix: str) -> float:
        """Seconds for `ssh NODE true` through the cluster's ssh_config; a failure ends the bench."""
        config = self.tree / "state" / self.tag / "ssh_config"
        t0 = time.monotonic()
        run = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", self.tag + suffix, "true"],
                             capture_output=True, text=True, timeout=300)
        if run.returncode:
            sys.exit(f"{self.label}: ssh {self.tag + suffix} failed right after doit start: {run.stderr}")
        return time.monotonic() - t0

    def round(self) -> None:
        self.doit("reset:disks")
        self.times["first"].append(self.doit("start", "b"))
        self.times["ssh"].append(self.ssh("b"))
        self.doit("shutdown", "b")
        self.times["next"].append(self.doit("start", "b"))
        self.doit("shutdown")
        self.doit("reset:disks")
        self.times["three"].append(self.doit("start"))
        for suffix in "abc":
            self.ssh(suffix)
        self.doit("shutdown")

    def analyze(self) -> tuple[str, str]:
        self.doit("start", "b")
        dom = self.virt.conn.lookupByName(self.tag + "b")
        self.virt.run(dom, ["systemctl", "is-system-running", "--wait"], timeout=900)
        summary = self.virt.run(dom, ["systemd-analyze"]).stdout.splitlines()[0]
        blame = self.virt.run(dom, ["sh", "-c", "systemd-analyze blame | head -8"]).stdout
        self.doit("shutdown")
        return summary, blame


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def main() -> None:
    WORK.chmod(0o755)
    before_rev = sys.argv[1] if len(sys.argv) > 1 else BEFORE_REV
    global ROUNDS
    ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else ROUNDS
    try:
        with common.checkout_of(before_rev, WORK / "before") as old_tree:
            measure(before_rev, old_tree)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    common.write("boot.md")


def measure(before_rev: str, old_tree: Path) -> None:
    variants = [Variant(f"before ({before_rev})", old_tree, "benchold"), Variant("after", REPO, "benchnew")]
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TCG guests, "
        f"before = {before_rev}, after = this checkout. Seconds until `doit start` returned with "
        "ssh working: the median, each round in brackets.")
    say()
    try:
        for v in variants:
            v.doit("clone")  # image, original, clones: the boots below measure nothing else
            v.doit("shutdown")
        for _ in range(ROUNDS):
            for v in variants:
                v.round()
        analysis = {v.label: v.analyze() for v in variants}

        say("| | a clone's first boot, `doit start b` | then `ssh b true` | its next boot | "
            "three fresh clones, `doit start` |")
        say("|---|---:|---:|---:|---:|")
        for v in variants:
            say(f"| {v.label} | {median(v.times['first'])} | {median(v.times['ssh'])} | "
                f"{median(v.times['next'])} | {median(v.times['three'])} |")
        old, new = variants
        say("| **speed-up** | " + " | ".join(
            f"**{statistics.median(old.times[k]) / statistics.median(new.times[k]):.1f}×**"
            for k in ("first", "ssh", "next", "three")) + " |")
        say()
        for label, (summary, blame) in analysis.items():
            say(f"{label}, node b's next boot: `{summary}`")
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
