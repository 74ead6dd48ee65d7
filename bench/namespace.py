"""A cluster built with its FAM's namespace from the checkout's cache, beside one whose original
boots to make it with ndctl (device.namespace_from = "cache" against "original"), in one run
(dali/namespaces.py).

    .venv/bin/python bench/namespace.py     # about 5 minutes; prints markdown, writes bench/namespace.md

Each round builds a fresh 3-node cluster (`doit`, the node image cached already) once each way,
alternating, and cleans it: the `doit` wall time, and whether the original booted (libvirt's
log of it counts its starts). First, the namespace is made once so that the cache holds it.
It builds its own clusters (tags "benchnsorig", "benchnscache", isolated networks) and removes
them at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from dali import namespaces, settings

import common
from common import say

ROUNDS = 3
WORK = Path(tempfile.mkdtemp(prefix="dali-bench-namespace-", dir="/var/tmp"))
WAYS = {"original": "benchnsorig", "cache": "benchnscache"}


def config(way: str) -> Path:
    tag = WAYS[way]
    path = WORK / f"{tag}.toml"
    path.write_text(f'tag = "{tag}"\nclones = ["b", "c"]\ndir = "{WORK / tag}"\n'
                    f'[network]\nforward = "none"\n[device]\nnamespace_from = "{way}"\n')
    return path


def build(way: str) -> tuple[float, int]:
    """(the seconds `doit` took, how many times the original booted in it)."""
    path = config(way)
    tag = WAYS[way]
    log = Path(f"/var/log/libvirt/qemu/{tag}a.log")
    starts_before = log.read_text().count("starting up") if log.exists() else 0
    seconds = common.doit(path)
    starts = log.read_text().count("starting up") if log.exists() else 0
    common.doit(path, "clean")
    return seconds, starts - starts_before


def main() -> None:
    WORK.chmod(0o755)
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TCG guests, a 3-node "
        "cluster of default settings (1 GiB FAM, fsdax), the node image cached.")
    say()
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    boots: dict[str, list[int]] = {way: [] for way in WAYS}
    try:
        common.doit(config("original"))  # an original makes it once: the cache holds it from here
        common.doit(config("original"), "clean")
        head = namespaces.cached_head(settings.load(config("cache"), env={}))
        for _ in range(ROUNDS):
            for way in WAYS:
                seconds, booted = build(way)
                times[way].append(seconds)
                boots[way].append(booted)
    finally:
        for way in WAYS:
            common.doit(config(way), "clean", check=False)
        shutil.rmtree(WORK, ignore_errors=True)
    say("| `device.namespace_from` | `doit` of a new cluster, seconds: median (each round) | the original booted |")
    say("|---|---:|---:|")
    for way in WAYS:
        rounds = ", ".join(f"{t:.1f}" for t in times[way])
        say(f"| {way} | {statistics.median(times[way]):.1f} ({rounds}) | {sum(boots[way])} of {ROUNDS} builds |")
    say()
    say(f"**{statistics.median(times['original']) / statistics.median(times['cache']):.1f}×** faster from the cache. "
        f"The cached head ({head.name}): {head.stat().st_size / 2**20:.0f} MiB, "
        f"{head.stat().st_blocks * 512 / 2**20:.1f} MiB on disk.")
    common.write("namespace.md")


if __name__ == "__main__":
    main()
