"""The scale curve: 1, 4, 8 and 16 nodes on this host, with a real libvirtd and TCG guests.

    .venv/bin/python bench/scale.py [--keep]   # about an hour; prints markdown, writes bench/scale.md

One cluster (tag "benchscale", isolated network, default node settings) grows from 1 to 16
nodes. For each N:
- `doit clone` (the clones added since the previous N; N = 1 is the cold `doit` of the original,
  its image from the cached debootstrap tarball);
- `doit start` until every node is up (agent, own host key, sshd), and `doit verify`;
- host memory while all N run: the qemu processes' resident memory (anonymous: the guest's own
  RAM; file: mostly the FAM, which every node maps shared) and how much of the FAM sits in the
  page cache once (fincore), so that per-node and shared costs are told apart;
- disk space in the data directory (blocks in use, not apparent sizes).
Then, at 16 nodes:
- `doit start --batch 0` (all at once) beside `--batch 2` and `--batch 4` (a batch is up, agent,
  own host key and sshd, before the next one boots), alternating;
- the no-op `doit` beside `python -c "import doit, libvirt, jinja2"`, 7 runs each, interleaved.
The cluster is removed at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dali import settings

import common
from common import say

TAG = "benchscale"
SIZES = (1, 4, 8, 16)
WORK = Path(tempfile.mkdtemp(prefix="dali-bench-scale-", dir="/var/tmp"))
CONFIG = WORK / "cluster.toml"
KEEP = "--keep" in sys.argv  # leave the 16 shut-off nodes defined, to profile the no-op doit
def configure(n: int):
    clones = list(string.ascii_lowercase[1:n])
    CONFIG.write_text(f'tag = "{TAG}"\nclones = {clones!r}\ndir = "{WORK / "data"}"\n'.replace("'", '"')
                      + '[network]\nforward = "none"\n[timeouts]\nboot = 1800\n')
    return settings.load(CONFIG, env={})


def doit(*args: str) -> float:
    return common.doit(CONFIG, *args)


def qemu_memory(cluster) -> tuple[list[int], list[int]]:
    """Each node's qemu: resident anonymous and resident file-backed memory, in KiB."""
    anon, files = [], []
    for pid_file in Path("/run/libvirt/qemu").glob(f"{TAG}*.pid"):
        status = Path(f"/proc/{pid_file.read_text().strip()}/status").read_text()
        fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", status, re.M))
        anon.append(int(fields["RssAnon"]))
        files.append(int(fields["RssFile"]) + int(fields["RssShmem"]))
    return anon, files


def fam_in_page_cache(cluster) -> int:
    """Bytes of the FAM resident in the host's page cache: counted once, however many map it."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(cluster.fam_path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def disk_used(path: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    WORK.chmod(0o755)
    mib = 2 ** 20
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // 2**30} GiB, TCG guests, "
        "default node settings (1 vCPU, 1 GiB RAM, 1 GiB FAM).")
    say()
    say("| N | `doit clone` s | `doit start` s | `doit verify` s | qemu RSS per node, MiB (anon + file) "
        "| FAM in page cache, MiB | host MemAvailable drop, MiB | disk used, MiB |")
    say("|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for n in SIZES:
            cluster = configure(n)
            clone = doit("clone") if n > 1 else doit()
            before = _mem_available()
            start = doit("start")
            verify = doit("verify")
            anon, files = qemu_memory(cluster)
            dropped = before - _mem_available()
            say(f"| {n} | {clone:.1f} | {start:.1f} | {verify:.1f} | "
                f"{statistics.mean(anon) / 1024:.0f} + {statistics.mean(files) / 1024:.0f} | "
                f"{fam_in_page_cache(cluster) / mib:.0f} | {dropped / 1024:.0f} | "
                f"{disk_used(cluster.data_dir) / mib:.0f} |")
            doit("shutdown")
        say()

        # The same `doit start` each time (up = agent, own host key, sshd), only --batch differs.
        timings: dict[int, list[float]] = {0: [], 2: [], 4: []}
        for _ in range(2):
            for size in timings:
                timings[size].append(doit("start", "--batch", str(size)))
                doit("shutdown")
        say("`doit start` of 16 shut-off nodes until each is up, 2 rounds each, alternating:")
        say()
        say("| `--batch` | seconds (each round) |")
        say("|---|---:|")
        for size, values in timings.items():
            how = "0 (all at once)" if size == 0 else str(size)
            say(f"| {how} | {statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)}) |")
        say()

        noop, imports = [], []
        for _ in range(7):
            noop.append(doit())
            imports.append(common.import_floor())
        say(f"No-op `doit` at 16 nodes (shut off), 7 runs: median {statistics.median(noop):.2f} s; "
            f"`python -c 'import doit, libvirt, jinja2'` in the same run: median "
            f"{statistics.median(imports):.2f} s; ratio {statistics.median(noop) / statistics.median(imports):.2f}.")
    finally:
        if KEEP:
            say(f"(--keep: the cluster stays, shut off: doit config={CONFIG} clean removes it)")
        else:
            doit("clean")
            shutil.rmtree(WORK, ignore_errors=True)
    common.write("scale.md")


def _mem_available() -> int:
    return int(re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1))


if __name__ == "__main__":
    main()
