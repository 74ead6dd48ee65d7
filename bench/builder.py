"""The image builder: debootstrap + tar beside mmdebstrap, on dali's own recipe, in one run.

    .venv/bin/python bench/builder.py      # about 5 minutes; prints markdown, writes bench/builder.md

Both build the recipe's tree (suite, mirror, --variant=minbase, the image's package list) as a
tarball, twice each, alternating; neither customises it (that step is the same whichever builds
the tree). Then the two tarballs are compared member by member: path, type, mode, owner, size,
and the contents of regular files; paths whose contents are expected to differ between any two
builds (logs, caches, the apt lists' timestamps) are counted apart.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from dali import guest_image, settings
from dali.cluster import REPO

WORK = Path(tempfile.mkdtemp(prefix="dali-bench-builder-", dir="/var/tmp"))
ROUNDS = 2
# Different in any two builds of the same recipe, whoever builds it.
VOLATILE = ("var/log/", "var/cache/", "var/lib/apt/lists/", "var/lib/dpkg/available",
            "etc/machine-id", "var/lib/dbus/machine-id", "etc/ld.so.cache", "var/cache/ldconfig/",
            "etc/hostname", "etc/resolv.conf", "etc/apt/sources.list", "debootstrap/")
results: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    results.append(line)


def debootstrap(recipe: dict, out: Path) -> float:
    tree = WORK / "tree"
    t0 = time.monotonic()
    subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(recipe["packages"]),
                    recipe["suite"], str(tree), recipe["mirror"]], check=True, capture_output=True)
    subprocess.run(["tar", "--create", "--file", str(out), "--numeric-owner", "--xattrs",
                    "--xattrs-include=*", "--sparse", "-C", str(tree), "."], check=True)
    elapsed = time.monotonic() - t0
    shutil.rmtree(tree)
    return elapsed


def mmdebstrap(recipe: dict, out: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(recipe["packages"]),
                    recipe["suite"], str(out), recipe["mirror"]], check=True, capture_output=True)
    return time.monotonic() - t0


def members(tarball: Path) -> dict[str, tuple]:
    found = {}
    with tarfile.open(tarball) as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            digest = hashlib.sha256(tar.extractfile(m).read()).hexdigest() if m.isreg() else m.linkname
            found[name] = (m.type, m.mode, m.uid, m.gid, m.size, digest)
    return found


def main() -> None:
    cluster = settings.load(env={})
    recipe = guest_image.rootfs_recipe(cluster.image.suite, cluster.image.mirror, cluster.image.http_proxy,
                                       cluster.image.extra_packages)
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; suite {recipe['suite']}, "
        f"mirror {recipe['mirror']}, {len(recipe['packages'])} packages on top of minbase.")
    say()
    times: dict[str, list[float]] = {"debootstrap + tar": [], "mmdebstrap": []}
    try:
        for round_ in range(ROUNDS):
            times["debootstrap + tar"].append(debootstrap(recipe, WORK / f"debootstrap-{round_}.tar"))
            times["mmdebstrap"].append(mmdebstrap(recipe, WORK / f"mmdebstrap-{round_}.tar"))
        say("| builder | seconds (median; each round) | tarball MiB |")
        say("|---|---:|---:|")
        for name, values in times.items():
            size = (WORK / f"{name.split()[0]}-0.tar").stat().st_size / 2**20
            say(f"| {name} | {statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)}) "
                f"| {size:.0f} |")
        say()
        a, b = members(WORK / "debootstrap-0.tar"), members(WORK / "mmdebstrap-0.tar")
        same_builder = members(WORK / "debootstrap-1.tar")
        for label, other in (("debootstrap twice", same_builder), ("debootstrap vs mmdebstrap", b)):
            only_a = sorted(set(a) - set(other))
            only_b = sorted(set(other) - set(a))
            differ = sorted(p for p in set(a) & set(other) if a[p] != other[p])
            stable = [p for p in differ if not p.startswith(VOLATILE)]
            say(f"- {label}: {len(only_a)} paths only in the first, {len(only_b)} only in the second, "
                f"{len(differ)} differing ({len(stable)} outside logs and caches)"
                + (f"; e.g. {', '.join((only_a + only_b + stable)[:8])}" if only_a or only_b or stable else ""))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    (REPO / "bench" / "builder.md").write_text("\n".join(results) + "\n")


if __name__ == "__main__":
    main()
