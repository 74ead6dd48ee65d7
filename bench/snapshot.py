"""A snapshot of a running 3-node OCFS2 cluster, timed on this host with a real libvirtd and real
TCG guests, beside what it saves: `doit rollback` against `doit restart` with OCFS2 mounted
again, in one run (#30; docs/snapshots.md).

    .venv/bin/python bench/snapshot.py      # about 10 minutes; prints markdown, writes bench/snapshot.md

1. The cluster booted, OCFS2 mounted (`doit start`), a file written on each node.
2. `doit snapshot formed`: its time, how long the nodes were paused, its size on disk and as files,
   each part's (the FAM, the disks, the memory files).
3. Three times each, alternating: `doit rollback formed` (until every node runs again, mounted);
   `doit restart` (until every node is usable again, OCFS2 mounted by doit start's set-up).
   The goal: a rollback in a quarter of the restart's time or less.
It builds its own cluster (tag "benchsnap", isolated network) and removes it at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from dali import settings, snapshot_store
from dali.storage.local import LocalDir
from dali.virt import Libvirt

import common
from common import say

TAG = "benchsnap"
ROUNDS = 3
WORK = Path(tempfile.mkdtemp(prefix="dali-bench-snapshot-", dir="/var/tmp"))
CONFIG = WORK / "cluster.toml"


def doit(*args: str) -> float:
    return common.doit(CONFIG, *args)


def mib(path: Path, allocated: bool) -> float:
    st = path.stat()
    return (st.st_blocks * 512 if allocated else st.st_size) / 2**20


def main() -> None:
    WORK.chmod(0o755)
    CONFIG.write_text(f'tag = "{TAG}"\nclones = ["b", "c"]\ndir = "{WORK / "data"}"\n'
                      '[network]\nforward = "none"\n[fs]\ntype = "ocfs2"\nheartbeat_threshold = 11\n')
    cluster = settings.load(CONFIG, env={})
    files = LocalDir(cluster, Libvirt(cluster.uri, cluster.id))
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TCG guests, "
        f"{cluster.fam_size >> 20} MiB FAM, {cluster.memory >> 20} MiB per node.")
    say()
    try:
        doit("start")
        doit("pssh", "echo kept > /data/$(hostname); sync")
        take = doit("snapshot", "formed")
        snap = snapshot_store.find(cluster, files, "formed")
        say("### `doit snapshot` of the running 3-node OCFS2 cluster")
        say()
        say("| what | seconds | MiB on disk | MiB as files |")
        say("|---|---:|---:|---:|")
        say(f"| `doit snapshot formed` (the nodes paused {snap.meta['paused_for']:.1f} s) | {take:.1f} | "
            f"{sum(mib(p, True) for p in snap.files()):.0f} | {sum(mib(p, False) for p in snap.files()):.0f} |")
        for part in snap.files():
            say(f"| {part.name} | | {mib(part, True):.0f} | {mib(part, False):.0f} |")
        say()

        rollbacks, restarts = [], []
        for _ in range(ROUNDS):
            doit("pssh", "echo later > /data/later-$(hostname); sync")
            rollbacks.append(doit("rollback", "formed"))
            # what a user would check, untimed: mounted everywhere, the later file gone
            doit("pssh", "mountpoint -q /data && test -e /data/$(hostname) && ! test -e /data/later-$(hostname)")
            restarts.append(doit("restart"))
            doit("pssh", "mountpoint -q /data && test -e /data/$(hostname)")
        say("### Back to a formed cluster: `doit rollback` against `doit restart`")
        say()
        say("| what | median seconds | each |")
        say("|---|---:|---|")
        say(f"| `doit rollback formed`: every node running, mounted, clocks set | "
            f"{statistics.median(rollbacks):.1f} | {', '.join(f'{t:.1f}' for t in rollbacks)} |")
        say(f"| `doit restart`: every node booted again, OCFS2 mounted | "
            f"{statistics.median(restarts):.1f} | {', '.join(f'{t:.1f}' for t in restarts)} |")
        say(f"| rollback / restart | {statistics.median(rollbacks) / statistics.median(restarts):.2f} | "
            "goal: 0.25 or less |")
        say()
    finally:
        doit("destroy")
        doit("clean")
        shutil.rmtree(WORK, ignore_errors=True)
    common.write("snapshot.md")


if __name__ == "__main__":
    main()
