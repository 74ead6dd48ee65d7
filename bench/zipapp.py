"""Torture's program starting in a node: python3 importing the workloads out of the zip file dali
ships to every node (dali/workloads/__init__.py), with the bytecode compiled on the host beside
the source (as shipped since 2026-12-06) and with the source alone (as before: each start
compiles the package again, since Python cannot write bytecode into a zip), alternating, in
one run on one booted node. Each `doit torture` starts one such python3 per workload and node,
and one more per node to check what it sees of every workload.

    .venv/bin/python bench/zipapp.py [ROUNDS]   # default 10; about 2 minutes

It builds its own one-node cluster (tag "benchzip", isolated network, under /var/tmp), and
removes it at the end. The table goes to bench/zipapp.md.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from dali import guest, settings, workloads
from dali.virt import Libvirt

import common
from common import say

TAG = "benchzip"
WORK = Path(tempfile.mkdtemp(prefix="dali-bench-zipapp-", dir="/var/tmp"))
# One start, timed inside the node (no agent round trip in it): seconds, printed.
TIMED = ('s=$(date +%s.%N); python3 -c "import sys; sys.path.insert(0, \'$1\'); import workloads.guest"; '
         'e=$(date +%s.%N); awk "BEGIN { print $e - $s }"')


def source_only(program: bytes) -> bytes:
    """The same zip without its bytecode: what dali shipped before."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(program)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            if not info.filename.endswith(".pyc"):
                z.writestr(info, src.read(info))
    return out.getvalue()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    WORK.chmod(0o755)
    config = common.cluster_file(WORK, TAG, 1)
    cluster = settings.load(config, env={})
    try:
        common.doit(config, "start")
        virt = Libvirt(cluster.uri, cluster.id)
        dom = virt.domain(cluster.nodes[0].name)
        shipped = workloads.zipapp()
        programs = {"bytecode and source (now)": shipped, "source only (before)": source_only(shipped)}
        for n, program in enumerate(programs.values()):
            guest.put_file(virt, dom, program, f"/root/program{n}.pyz", 0o644)
        took: dict[str, list[float]] = {name: [] for name in programs}
        for _ in range(rounds + 1):  # the first round warms the node's page cache, and is not kept
            for n, name in enumerate(programs):
                said = virt.run(dom, ["sh", "-c", TIMED, "-", f"/root/program{n}.pyz"]).check("python3")
                took[name].append(float(said.stdout.strip()))
        say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores: one TCG node, otherwise "
            f"idle, {rounds} rounds alternating (a first one not kept).")
        say()
        say("| the zip shipped | median s | fastest s | each |")
        say("|---|---:|---:|---|")
        for name, times in took.items():
            kept = times[1:]
            say(f"| {name} | {statistics.median(kept):.2f} | {min(kept):.2f} | "
                f"{', '.join(f'{t:.2f}' for t in kept)} |")
        now, before = (statistics.median(t[1:]) for t in took.values())
        say(f"| now / before | {now / before:.2f} | | |")
        say()
    finally:
        common.doit(config, "destroy", check=False)
        common.doit(config, "clean", check=False)
        shutil.rmtree(WORK, ignore_errors=True)
    common.write("zipapp.md")


if __name__ == "__main__":
    main()
