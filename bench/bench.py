"""dali's speed figures, measured on this host with a real libvirtd and real TCG guests.

    .venv/bin/python bench/bench.py            # ~10 minutes; prints markdown, writes bench/results.md

What it measures (the README quotes the results):
  1. a cold `doit` (original only), per stage, and the no-op `doit` on the built cluster;
  2. one clone, linked and copy, beside `virt-clone` of the same shut-off original;
  3. that a linked clone does not grow with the disk's size;
  4. `doit clone` defining 16 clones;
  5. `doit start` until every guest agent answers, for 3 nodes.
It builds its own cluster (tag "bench", isolated network) and removes it at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from dali import disks, settings
from dali.cluster import REPO, Cluster

TAG = "bench"
CONFIG = Path(tempfile.mkdtemp(prefix="dali-bench-")) / "cluster.toml"
results: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    results.append(line)


def write_config(clones: list[str], mode: str = "linked") -> Cluster:
    CONFIG.write_text(textwrap.dedent(f"""\
        tag = "{TAG}"
        clones = {json.dumps(clones)}
        [network]
        name = "{TAG}"
        forward = "none"
        address = "192.168.215.254"
        dhcp_start = "192.168.215.1"
        dhcp_end = "192.168.215.40"
        [clone]
        mode = "{mode}"
    """))
    return settings.load(CONFIG, env={})


def doit(*args: str) -> tuple[float, list[tuple[str, float]]]:
    """Run doit; return the wall time and (task, seconds) for each task it executed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALI_")}
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.monotonic()
    proc = subprocess.Popen([str(REPO / ".venv/bin/doit"), *args, f"config={CONFIG}"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    starts = []
    for line in proc.stdout:
        m = re.match(r"^\.  (\S+)", line)
        if m:
            starts.append((m.group(1), time.monotonic()))
    if proc.wait() != 0:
        raise SystemExit(f"doit {' '.join(args)} failed")
    end = time.monotonic()
    stamps = [t for _, t in starts] + [end]
    return end - t0, [(name, stamps[i + 1] - t) for i, (name, t) in enumerate(starts)]


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def stage_times() -> None:
    write_config([])
    total, tasks = doit()
    say("### Cold `doit` (original only; debootstrap tarball already cached)")
    say()
    say("| stage | seconds |")
    say("|---|---:|")
    for name, secs in tasks:
        say(f"| {name} | {secs:.1f} |")
    say(f"| **total** | **{total:.1f}** |")
    noop = [doit()[0] for _ in range(7)]
    say()
    say(f"No-op `doit` on the built cluster (7 runs): median {statistics.median(noop):.2f} s, "
        f"max {max(noop):.2f} s (target < 1 s).")
    say()


def clone_times() -> None:
    cluster = write_config(["b"], "linked")
    total_linked, tasks = doit("clone")
    disk_linked = dict(tasks).get(f"disk:{TAG}b", 0.0)
    cluster = write_config(["b", "c"], "copy")
    total_copy, tasks = doit("clone")
    disk_copy = dict(tasks).get(f"disk:{TAG}c", 0.0)

    # virt-clone (package virtinst) on the same shut-off original, the way the seed's `dali clone` did.
    if not shutil.which("virt-clone"):
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "virtinst"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    vc_disk = cluster.data_dir / "virt-clone.qcow2"
    t0 = time.monotonic()
    subprocess.run(["virt-clone", "--connect", "qemu:///system", "--original", f"{TAG}a",
                    "--name", f"{TAG}-virtclone", "--file", str(vc_disk)], check=True,
                   stdout=subprocess.DEVNULL)
    virt_clone = time.monotonic() - t0
    vc_size = allocated(vc_disk)
    subprocess.run(["virsh", "-q", "-c", "qemu:///system", "undefine", f"{TAG}-virtclone"],
                   check=True, stdout=subprocess.DEVNULL)
    vc_disk.unlink()

    say("### One clone of the shut-off original")
    say()
    say("| how | `doit clone` wall time | making the disk | disk space used |")
    say("|---|---:|---:|---:|")
    say(f"| linked (qcow2 overlay) | {total_linked:.2f} s (incl. the one-off freeze) | "
        f"{disk_linked:.2f} s | {mib(allocated(cluster.data_dir / f'{TAG}b.qcow2'))} |")
    say(f"| copy (standalone qcow2) | {total_copy:.2f} s | {disk_copy:.2f} s | "
        f"{mib(allocated(cluster.data_dir / f'{TAG}c.qcow2'))} |")
    say(f"| virt-clone | {virt_clone:.2f} s | (same) | {mib(vc_size)} |")
    say()


def linked_clone_size() -> None:
    """An overlay's size and time do not depend on how much data lies below it."""
    work = Path(tempfile.mkdtemp(prefix="dali-bench-disk-", dir="/var/tmp"))
    say("### A linked clone does not grow with the disk")
    say()
    say("| data in the backing disk | overlay made in | overlay size |")
    say("|---:|---:|---:|")
    try:
        for gib in (0.25, 4.0):
            backing = work / f"backing-{gib}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(backing), "8G"], check=True)
            chunk = 256  # MiB; qemu-io takes at most 2 GiB per request
            writes = [arg for i in range(int(gib * 1024) // chunk)
                      for arg in ("-c", f"write -P 0x5a {i * chunk}M {chunk}M")]
            subprocess.run(["qemu-io", *writes, str(backing)], check=True, stdout=subprocess.DEVNULL)
            overlay = work / f"overlay-{gib}.qcow2"
            t0 = time.monotonic()
            disks.make_overlay(backing, overlay, TAG)
            took = time.monotonic() - t0
            say(f"| {mib(allocated(backing))} | {took * 1000:.0f} ms | {mib(allocated(overlay))} |")
    finally:
        shutil.rmtree(work)
    say()


def sixteen_clones() -> None:
    suffixes = [f"n{i:02d}" for i in range(16)]
    write_config(suffixes, "linked")
    total, tasks = doit("clone")
    defines = sum(s for n, s in tasks if n.startswith("define:"))
    say(f"### 16 clones: `doit clone` took {total:.1f} s ({defines:.2f} s of it in libvirt defines)")
    say()
    write_config(["b", "c"], "linked")
    doit()  # prunes the 16 (shut off)


def start_three() -> None:
    total, _ = doit("start")
    say(f"### `doit start`, 3 nodes (the original + 2 clones) under TCG: every guest agent answered "
        f"after {total:.1f} s")
    say()
    doit("shutdown")


def main() -> None:
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, TCG guests.")
    say()
    try:
        stage_times()
        clone_times()
        linked_clone_size()
        sixteen_clones()
        start_three()
    finally:
        doit("clean")
        shutil.rmtree(CONFIG.parent, ignore_errors=True)
    (REPO / "bench" / "results.md").write_text("\n".join(results) + "\n")


if __name__ == "__main__":
    main()
