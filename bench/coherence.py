"""What checking costs: the same 3-node cluster with device.coherence off and strict, side by
side in one run, with a real libvirtd and TCG guests.

    .venv/bin/python bench/coherence.py [ROUNDS]   # about 6 minutes for 1 round, 3 more per round; writes bench/coherence.md

Two clusters (tags benchcoh0, benchcoh1; devdax, so torture's mmap and block workloads run on
the shared device; isolated networks) are built once. Then, alternating between them so that
both see the same load, each round:

1. `doit start`: three nodes booted, until each is usable (ssh, the device);
2. `doit verify`: every node writes and reads the shared device;
3. `doit torture --seconds 20`: operations done in 20 s, per workload (more is faster);
4. `doit shutdown`.

Then, for the checked cluster: the model file's size and what of it is not a hole (its memory
once every node maps it), and the same for a 1 GiB FAM computed from the layout; the QEMU
processes' resident memory with the plugin against without. Both clusters are removed at the
end.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common
from common import say

from dali import settings
from dali.coherence import model

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
WORK = Path(tempfile.mkdtemp(prefix="dali-bench-coherence-", dir="/var/tmp"))
WORK.chmod(0o755)


class Variant:
    def __init__(self, label: str, tag: str, coherence: str):
        self.label, self.tag = label, tag
        self.config = WORK / f"{tag}.toml"
        self.config.write_text(f'tag = "{tag}"\nclones = ["b", "c"]\ndir = "{WORK / tag}"\n'
                               '[network]\nforward = "none"\n[timeouts]\nboot = 900\n'
                               f'[device]\nstyle = "native"\nmode = "devdax"\ncoherence = "{coherence}"\n')
        self.cluster = settings.load(self.config, env={})
        self.times: dict[str, list[float]] = {"start": [], "verify": []}
        self.ops: dict[str, list[int]] = {}

    def doit(self, *args: str, check: bool = True) -> float:
        return common.doit(self.config, *args, check=check)

    def torture(self) -> None:
        for workload, ops in common.torture_ops(self.config, ("mmap", "block"), 20).items():
            self.ops.setdefault(workload, []).append(ops)

    def qemu_rss_mib(self) -> float:
        out = subprocess.run(["ps", "-eo", "rss,args"], capture_output=True, text=True).stdout
        rss = [int(line.split()[0]) for line in out.splitlines() if f"guest={self.tag}" in line]
        return sum(rss) / 1024 / max(1, len(rss))


def main() -> None:
    off, strict = Variant("off", "benchcoh0", "off"), Variant("strict", "benchcoh1", "strict")
    say("# Coherence checking: what it costs")
    say()
    say(f"3 nodes each, devdax, TCG, {ROUNDS} round(s), the two clusters alternating.")
    try:
        for v in (off, strict):
            v.doit()  # built once (image, original, clones; the checked QEMU and plugin)
        rss = {}
        for _ in range(ROUNDS):
            for v in (off, strict):
                v.times["start"].append(v.doit("start"))
                v.times["verify"].append(v.doit("verify"))
                v.torture()
                rss[v.label] = v.qemu_rss_mib()
                v.doit("shutdown")
        say()
        say("| | coherence off | strict | ratio |")
        say("|---|---:|---:|---:|")
        for what in ("start", "verify"):
            a, b = statistics.median(off.times[what]), statistics.median(strict.times[what])
            say(f"| `doit {what}` (s) | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
        for workload in sorted(set(off.ops) | set(strict.ops)):
            a = statistics.median(off.ops.get(workload, [0]))
            b = statistics.median(strict.ops.get(workload, [0]))
            say(f"| torture {workload}: operations in 20 s | {a:.0f} | {b:.0f} | "
                f"{(a / b if b else float('inf')):.2f}x slower |")
        say(f"| QEMU resident memory per node (MiB) | {rss['off']:.0f} | {rss['strict']:.0f} | |")
        path = strict.cluster.coherence_model
        say()
        say(f"The model for this cluster's {strict.cluster.fam_size >> 20} MiB FAM: a file of "
            f"{path.stat().st_size / 2**20:.0f} MiB, of which {model.resident_bytes(path) / 2**20:.1f} MiB "
            "is not a hole after the rounds above (its memory once mapped: the page cache of it).")
        gib = 1 << 30
        say(f"For a 1 GiB FAM: {model.file_size(gib) / 2**20:.0f} MiB at most (24 bytes per 64-byte line, "
            f"{model.FINDINGS_SLOTS} finding slots of {model.SLOT} bytes), whatever the node count "
            f"(up to {model.NODES_MAX}): only the lines the nodes touch take memory.")
    finally:
        for v in (off, strict):
            v.doit("destroy", check=False)
            v.doit("clean", check=False)
        shutil.rmtree(WORK, ignore_errors=True)
    common.write("coherence.md")


if __name__ == "__main__":
    main()
