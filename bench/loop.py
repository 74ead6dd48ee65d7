"""The kernel developer's loop, timed on this host with a real libvirtd and real TCG guests.

    .venv/bin/python bench/loop.py          # about 15 minutes; prints markdown, writes bench/loop.md

1. A kernel change picked up by 3 running nodes: the new bzImage copied over the old one, then
   `doit` (initramfs and modules disk rebuilt, definitions marked stale) and `doit restart`,
   until every node's guest agent answers on the new kernel. "Your kernel" is Debian's cloud
   kernel, 6.1.0-47 then 6.1.0-50 (apt-get download, dpkg-deb -x).
2. `doit reset` with a 1 GiB FAM, beside the obvious alternative measured in the same run: a
   plain full copy of a 1 GiB golden file over the FAM (cp --sparse=never).
It builds its own cluster (tag "benchloop", isolated network) and removes it at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from dali import reset, settings

import common
from common import say

TAG = "benchloop"
KERNELS = ("6.1.0-47-cloud-amd64", "6.1.0-50-cloud-amd64")
WORK = Path(tempfile.mkdtemp(prefix="dali-bench-loop-", dir="/var/tmp"))
CONFIG = WORK / "cluster.toml"
def doit(*args: str) -> float:
    return common.doit(CONFIG, *args)


def main() -> None:
    WORK.chmod(0o755)
    own = WORK / "X"
    for version in KERNELS:
        subprocess.run(["apt-get", "download", "-q", f"linux-image-{version}-unsigned"], cwd=WORK,
                       check=True, capture_output=True)
    for deb in WORK.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(own)], check=True)
    shutil.copyfile(own / f"boot/vmlinuz-{KERNELS[0]}", own / "bzImage")
    CONFIG.write_text(f'tag = "{TAG}"\nclones = ["b", "c"]\ndir = "{WORK / "data"}"\n'
                      f'[network]\nforward = "none"\n[kernel]\npath = "{own / "bzImage"}"\n'
                      f'modules = "{own}"\n')
    cluster = settings.load(CONFIG, env={})
    say(f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, TCG guests.")
    say()
    try:
        doit("start")
        shutil.copyfile(own / f"boot/vmlinuz-{KERNELS[1]}", own / "bzImage")  # `make bzImage` again
        rebuild = doit()
        restart = doit("restart")
        say("### A kernel change, 3 running nodes")
        say()
        say("| step | seconds |")
        say("|---|---:|")
        say(f"| `doit`: initramfs, modules disk, 3 definitions | {rebuild:.1f} |")
        say(f"| `doit restart` until every node answers, sshd up | {restart:.1f} |")
        say(f"| **from the new bzImage to 3 nodes on it** | **{rebuild + restart:.1f}** |")
        say()

        doit("shutdown")
        with open(cluster.fam_path, "r+b") as f:  # as if a test wrote all over the device
            for at in range(32 << 20, cluster.fam_size, 1 << 20):
                os.pwrite(f.fileno(), os.urandom(4096) * 256, at)
        fam_reset = doit("reset:fam")
        disks_reset = doit("reset:disks")
        full = WORK / "golden-full"
        subprocess.run(["cp", "--sparse=never", str(reset.golden(cluster)), str(full)], check=True)
        t0 = time.monotonic()
        subprocess.run(["cp", "--sparse=never", str(full), str(WORK / "fam-copy")], check=True)
        os.sync()
        plain = time.monotonic() - t0
        say("### `doit reset` with a 1 GiB FAM (nodes shut off)")
        say()
        say("| what | seconds |")
        say("|---|---:|")
        say(f"| `doit reset:fam` (golden copy: the reserved area, sparse; in place) | {fam_reset:.2f} |")
        say(f"| `doit reset:disks` (3 new overlays) | {disks_reset:.2f} |")
        say(f"| a plain full copy of a 1 GiB golden file, for comparison | {plain:.2f} |")
        say()
    finally:
        doit("clean")
        shutil.rmtree(WORK, ignore_errors=True)
    common.write("loop.md")


if __name__ == "__main__":
    main()
