"""The shared device ready for filesystem work, on qemu:///system with real guests: OCFS2 across
the nodes, never formatting a device that holds anything, a node added while the others run.
test_device_modes.py has devdax, libvirt's own NVDIMM device and the refused mode change."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from dali import fam
from support.cluster import unique_tag
from support.doit import one_error_line

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

TAG = unique_tag("dalifs")


@pytest.fixture(scope="module")
def cluster(ocfs2_cluster):
    """conftest.ocfs2_cluster, which test_torture.py uses after this module."""
    return ocfs2_cluster


def fam_block(c, offset: int, data: bytes | None = None) -> bytes:
    """Read (or write) 4 KiB of the device, on the host, through the FAM."""
    at = fam.namespace(c.cfg.fam_path)["data_offset"] + offset
    with open(c.cfg.fam_path, "r+b") as f:
        if data is not None:
            os.pwrite(f.fileno(), data, at)
        return os.pread(f.fileno(), 4096, at)


def mounted_on(c, suffixes="abc") -> dict[str, bool]:
    run = c.doit("pssh", "--on", ",".join(suffixes), "mountpoint -q /data && echo yes || echo no",
                 check=False)
    return {s: f"--- {TAG}{s} (exit 0)\nyes" in run.stdout for s in suffixes}


def test_a_device_with_data_is_never_formatted(cluster):
    cluster.doit()  # the original makes the namespace fsdax; nothing formats yet
    stray = os.urandom(4096)
    fam_block(cluster, 300 * 2**20, stray)  # an arbitrary non-zero block, somewhere
    line = one_error_line(cluster.doit("start", check=False))
    assert "formats only a blank device" in line and "mkfs --yes" in line
    assert fam_block(cluster, 300 * 2**20) == stray, "not a byte of it changed"
    assert not running(cluster), "refused before a node booted"
    fam_block(cluster, 300 * 2**20, bytes(4096))  # put the device back to blank

    # ext4, this time: made on the host into the FAM where the device's bytes lie, the very
    # bytes mkfs.ext4 of /dev/pmem0 in a node writes (the refusal asks the FAM, not a node)
    start = fam.namespace(cluster.cfg.fam_path)["data_offset"]
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={start}", str(cluster.cfg.fam_path),
                    f"{(cluster.cfg.fam_path.stat().st_size - start) // 1024}k"], check=True)
    before = cluster.cfg.fam_path.read_bytes()
    line = one_error_line(cluster.doit("start", check=False))
    assert "ext4" in line
    assert cluster.cfg.fam_path.read_bytes() == before
    assert not running(cluster), "refused before a node booted"


def running(c) -> list[str]:
    return [name for name, dom in c.virt.our_domains().items() if dom.isActive()]


def test_ocfs2_is_mounted_on_every_node_after_start(cluster):
    # The ext4 of the test before lies all over the device (group descriptors, backup
    # superblocks): make it blank again, every MiB that is not zero, zeroed.
    zeros = bytes(2**20)
    with open(cluster.cfg.fam_path, "r+b") as f:
        start = fam.namespace(cluster.cfg.fam_path)["data_offset"]
        for at in range(start, os.fstat(f.fileno()).st_size, 2**20):
            if os.pread(f.fileno(), 2**20, at) != zeros:
                os.pwrite(f.fileno(), zeros, at)
    cluster.doit("start")
    assert mounted_on(cluster) == {"a": True, "b": True, "c": True}
    threshold = cluster.doit("pssh", f"cat /sys/kernel/config/cluster/{TAG}/heartbeat/dead_threshold").stdout
    assert threshold.count("(exit 0)\n11\n") == 3, "fs.heartbeat_threshold, live on every node"
    for s in "abc":
        cluster.doit("pssh", "--on", s, f"echo from {TAG}{s} > /data/from-{s}")
    for s in "abc":
        run = cluster.doit("pssh", "--on", s, "cat /data/from-a /data/from-b /data/from-c")
        assert f"from {TAG}a\nfrom {TAG}b\nfrom {TAG}c\n" in run.stdout
    run = cluster.doit("verify")
    assert "/data/.dali-verify-" in run.stdout
    assert "dali-verify" not in cluster.doit("pssh", "--on", "a", "ls -a /data").stdout, "nothing left"


def test_the_filesystem_survives_doit_and_a_restart(cluster):
    cluster.doit()
    cluster.doit("shutdown")
    cluster.doit("start")
    assert mounted_on(cluster) == {"a": True, "b": True, "c": True}
    run = cluster.doit("pssh", "--on", "b", "cat /data/from-a")
    assert f"from {TAG}a" in run.stdout, "not reformatted"


def mount_ids(c, suffixes: str) -> dict[str, str]:
    """Each node's mount of /data, by findmnt's ID: a node that unmounted and mounted again
    has another."""
    run = c.doit("pssh", "--on", ",".join(suffixes), "findmnt -n -o ID /data").stdout
    return {m.group(1): m.group(2) for m in re.finditer(rf"--- {TAG}(\w) \(exit 0\)\n(\d+)", run)}


def test_a_fourth_node_joins_while_three_run_mounted(cluster):
    ids = mount_ids(cluster, "abc")
    cluster.set(clones=["b", "c", "d"])
    cluster.doit("clone")  # joins d to the cluster on the running nodes
    cluster.doit("start", "d")
    assert mounted_on(cluster, "abcd") == {"a": True, "b": True, "c": True, "d": True}
    assert mount_ids(cluster, "abc") == ids, "no running node unmounted"
    run = cluster.doit("pssh", "--on", "d", "cat /data/from-c")
    assert f"from {TAG}c" in run.stdout


def test_the_fourth_node_leaves_while_three_stay_mounted(cluster):
    """As a user takes a node out: shut it down, drop it from the config, `doit`, then
    `doit remove:NODE` for its disk. The others keep their mounts and the files; neither their
    cluster.conf nor o2cb's registration names it, and a node booting afterwards joins them. (After the join above; the modules after this one work on
    a, b and c.)"""
    ids = mount_ids(cluster, "abc")
    cluster.doit("shutdown", "d")  # it unmounts and leaves the heartbeat: nobody waits for it
    cluster.set(clones=["b", "c"])
    run = cluster.doit()
    assert f"{TAG}d: no longer in the config: undefined" in run.stderr + run.stdout
    cluster.doit(f"remove:{TAG}d")
    assert cluster.virt.domain(f"{TAG}d") is None and not cluster.files.exists(cluster.disk("d"))
    assert mount_ids(cluster, "abc") == ids, "no node that stays unmounted"
    names = cluster.doit("pssh", "--on", "a,b,c", "grep -c 'name = ' /etc/ocfs2/cluster.conf").stdout
    assert names.count("\n4\n") == 3, names  # the cluster's name and a, b, c: d is gone
    registered = cluster.doit("pssh", "--on", "a,b,c", f"ls /sys/kernel/config/cluster/{TAG}/node").stdout
    assert registered.count(f"{TAG}a\n{TAG}b\n{TAG}c\n") == 3, registered  # o2cb's view too
    cluster.doit("pssh", "--on", "c", "echo once d left > /data/d-gone")
    assert "once d left" in cluster.doit("pssh", "--on", "a", "cat /data/d-gone").stdout
    # A node booting now joins the others (o2dlm refuses a node whose registered nodes differ).
    cluster.doit("shutdown", "c")
    cluster.doit("start", "c")
    assert mounted_on(cluster) == {"a": True, "b": True, "c": True}
    assert "once d left" in cluster.doit("pssh", "--on", "c", "cat /data/d-gone").stdout
