"""The image builder's debootstrap, as it ran before and as dali runs it now, in one run.

    .venv/bin/python bench/builder.py [ROUNDS]    # about 6 minutes for 2 rounds; writes bench/builder.md

before: plain `debootstrap --variant=minbase --include=<the image's packages>`, as dali ran it
        until 2026-11-29: dpkg fsyncs every file it unpacks, and the kernel's postinst and then
        initramfs-tools' trigger each build an initrd.
after:  dali's own call (image_builder._debootstrap): dpkg with force-unsafe-io and INITRD=No.

Both keep their packages in the checkout's state/cache/debs/ (as dali does), so neither
downloads more than the other; the rounds alternate. Neither customises the tree (that step is
the same either way). Then the two trees are compared path by path (type, mode, owner, size,
contents): what differs beyond logs and caches is listed, and should be the initrd and the
dpkg setting that dali's customisation removes.

An earlier version of this bench set debootstrap beside mmdebstrap (docs/speed.md): mmdebstrap
was no faster here within the noise, and built a tree that differs in over 2,000 paths.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dali import image_builder, settings
from dali.cluster import REPO
from dali.scratch import remove_tree

WORK = Path(tempfile.mkdtemp(prefix="dali-bench-builder-", dir="/var/tmp"))
# Different in any two builds of the same recipe, whoever builds it.
VOLATILE = ("var/log/", "var/cache/", "var/lib/apt/lists/", "var/lib/dpkg/available",
            "etc/machine-id", "var/lib/dbus/machine-id", "etc/ld.so.cache", "var/cache/ldconfig/",
            "etc/hostname", "etc/resolv.conf", "etc/apt/sources.list", "debootstrap/",
            "etc/ssh/ssh_host_")  # made by openssh-server's postinst: per build (customise removes them)
results: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    results.append(line)


def before(recipe: dict, tree: Path, debs: Path) -> None:
    subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(recipe["packages"]),
                    f"--cache-dir={debs}", recipe["suite"], str(tree), recipe["mirror"]],
                   check=True, capture_output=True)


def after(recipe: dict, tree: Path, debs: Path) -> None:
    image_builder._debootstrap(recipe, tree, WORK / "after.log", debs, lambda line: None)


def snapshot(tree: Path) -> dict[str, tuple]:
    found = {}
    for path in tree.rglob("*"):
        st = path.lstat()
        if path.is_symlink():
            what = os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = ""
        found[str(path.relative_to(tree))] = (st.st_mode, st.st_uid, st.st_gid,
                                              st.st_size if path.is_file() else 0, what)
    return found


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    cluster = settings.load(env={})
    recipe = image_builder.rootfs_recipe(cluster.image.suite, cluster.image.mirror, cluster.image.http_proxy,
                                       list(cluster.image.extra_packages))
    debs = cluster.cache_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; suite {recipe['suite']}, "
        f"mirror {recipe['mirror']}, {len(recipe['packages'])} packages on top of minbase, their "
        "packages already in state/cache/debs/. Seconds of debootstrap:")
    say()
    variants = {"before (plain debootstrap)": before, "after (no fsync, no initramfs)": after}
    times: dict[str, list[float]] = {name: [] for name in variants}
    trees: dict[str, dict] = {}
    try:
        for _round in range(rounds):
            for name, build in variants.items():
                tree = WORK / "tree"
                t0 = time.monotonic()
                build(recipe, tree, debs)
                times[name].append(time.monotonic() - t0)
                trees.setdefault(name, snapshot(tree))
                remove_tree(tree)
        say("| debootstrap | median s | each round |")
        say("|---|---:|---|")
        for name, values in times.items():
            say(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
        first, second = trees.values()
        say(f"| **speed-up** | **{statistics.median(times[next(iter(times))]) / statistics.median(list(times.values())[1]):.1f}x** | |")
        say()
        only_before = sorted(p for p in set(first) - set(second) if not p.startswith(VOLATILE))
        only_after = sorted(p for p in set(second) - set(first) if not p.startswith(VOLATILE))
        differ = sorted(p for p in set(first) & set(second) if first[p] != second[p] and not p.startswith(VOLATILE))
        say(f"Trees compared, logs, caches and per-build host keys aside: only before: "
            f"{', '.join(only_before) or 'nothing'}; only after: {', '.join(only_after) or 'nothing'}; "
            f"differing: {', '.join(differ) or 'nothing'}.")
    finally:
        remove_tree(WORK)
    (REPO / "bench" / "builder.md").write_text("\n".join(results) + "\n")


if __name__ == "__main__":
    main()
