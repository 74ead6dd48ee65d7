"""The kernel developer's loop, on qemu:///system with real guests: every node on a kernel that
is not the image's, with its own modules directory; a rebuilt kernel picked up by exactly the
definitions and `doit restart`; a host directory shared read-write; a gdb stub per node; and
`doit reset`. "Your kernel" is a Debian cloud kernel (NVDIMM drivers as modules, no 9p or
OCFS2), unpacked with dpkg-deb -x as `make modules_install INSTALL_MOD_PATH=` would lay it out.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dali import fam, guest, reset
from dali.cluster import REPO
from dali.domain import gdb_socket
from support.cluster import ClusterUnderTest, unique_tag
from support.doit import one_error_line

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

TAG = unique_tag("dalikern")
# Two Debian cloud kernels stand for "your kernel" and "your kernel, rebuilt": whichever two
# the mirror has (it drops old ABIs), cached under state/cache/ so a second run downloads nothing.
KERNEL_CACHE = REPO / "state" / "cache" / "test-kernels"
PACKAGE = re.compile(r"^linux-image-(6\.1\.0-(\d+)-cloud-amd64)-unsigned_[^_]+_amd64\.deb$")


def _abi(version: str) -> int:
    return int(version.split("-")[1])


def _cached() -> dict[str, Path]:
    """The kernel packages already in the cache, by version (6.1.0-N-cloud-amd64)."""
    found = {}
    for deb in KERNEL_CACHE.glob("*.deb") if KERNEL_CACHE.exists() else ():
        m = PACKAGE.match(deb.name)
        if m:
            found[m.group(1)] = deb
    return found


def _on_the_mirror() -> list[str]:
    """The cloud kernels apt knows (newest first), as `apt-cache search` lists them."""
    listed = subprocess.run(["apt-cache", "search", "--names-only",
                             r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$"],
                            capture_output=True, text=True, check=True).stdout
    versions = re.findall(r"^linux-image-(6\.1\.0-\d+-cloud-amd64)-unsigned ", listed, re.M)
    return sorted(set(versions), key=_abi, reverse=True)


def two_kernel_packages() -> dict[str, Path]:
    """Two distinct kernel packages, oldest first: from the cache, or else the newest the mirror
    has, downloaded (apt-get download) into the cache. A version apt lists but the mirror no
    longer serves (an index older than the mirror) is passed over for the next."""
    cached = _cached()
    if len(cached) < 2:
        KERNEL_CACHE.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".download-", dir=KERNEL_CACHE))
        try:
            for version in _on_the_mirror():
                if len(cached) >= 2:
                    break
                if version in cached:
                    continue
                got = subprocess.run(["apt-get", "download", "-q", f"linux-image-{version}-unsigned"],
                                     cwd=work, capture_output=True, text=True)
                print(f"$ apt-get download linux-image-{version}-unsigned  (exit {got.returncode})\n"
                      f"{got.stdout}{got.stderr}")
                for deb in work.glob("*.deb"):  # whole, or not at all: renamed into the cache
                    deb.rename(KERNEL_CACHE / deb.name)
                cached = _cached()
        finally:
            shutil.rmtree(work)
    assert len(cached) >= 2, (f"two linux-image-6.1.0-N-cloud-amd64-unsigned packages are needed, "
                              f"found {sorted(cached)} in {KERNEL_CACHE} and on the mirror: apt-get update?")
    versions = sorted(cached, key=_abi)[-2:]
    return {v: cached[v] for v in versions}


@pytest.fixture(scope="module")
def kernels() -> tuple[str, str]:
    """The two kernel versions: (what the nodes boot first, what `make bzImage` rebuilds)."""
    return tuple(two_kernel_packages())


@pytest.fixture(scope="module")
def own(kernels):
    """X/lib/modules/<both versions> and X/boot/vmlinuz-<both>, from Debian's packages."""
    where = Path(tempfile.mkdtemp(prefix="dali-kernels-", dir="/var/tmp"))
    try:
        for deb in two_kernel_packages().values():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(where / "X")], check=True)
        yield where / "X"
    finally:
        shutil.rmtree(where)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, own, kernels):
    share = Path(tempfile.mkdtemp(prefix="dali-share-", dir="/var/tmp"))
    bzimage = own / "bzImage"  # where the developer's build puts it, rebuilt in place
    shutil.copyfile(own / f"boot/vmlinuz-{kernels[0]}", bzimage)
    c = ClusterUnderTest(tmp_path_factory.mktemp(TAG) / "cluster.toml", TAG, clones=["b"],
                         share=[{"source": str(share), "target": "/src"}],
                         kernel={"path": str(bzimage), "modules": str(own)}, debug={"gdb": True})
    c.share = share
    yield c
    c.teardown()
    shutil.rmtree(share)


def on_each(c, command: str) -> dict[str, str]:
    """A command on every node (doit pssh); each node's output, by suffix."""
    run = c.doit("pssh", command)
    return {m.group(1)[-1]: m.group(2) for m in
            re.finditer(rf"^--- ({TAG}\w) \(exit 0\)\n(.*?)(?=^--- |^{TAG}\w: )", run.stdout, re.M | re.S)}


def test_every_node_boots_my_kernel_with_my_modules(cluster, kernels):
    cluster.doit("start")
    for suffix, release in on_each(cluster, "uname -r").items():
        assert release.strip() == kernels[0], suffix
    for suffix in "ab":
        ns = guest.namespace(cluster.virt, cluster.dom(suffix))
        assert ns["mode"] == "fsdax" and ns["uuid"] == fam.namespace(cluster.cfg.fam_path)["uuid"]
    mounted = on_each(cluster, "findmnt -n -o SOURCE,OPTIONS /usr/lib/modules; modprobe -n -v nd_pmem")
    assert all(out.startswith("/dev/vdb ro") for out in mounted.values()), mounted


def test_a_shared_directory_both_ways(cluster):
    (cluster.share / "from-host").write_text("written on the host\n")
    for out in on_each(cluster, "cat /src/from-host").values():
        assert out == "written on the host\n"
    cluster.doit("pssh", "--on", "b", "echo written in b > /src/from-b")
    assert (cluster.share / "from-b").read_text() == "written in b\n"


def gdb_reply(s: socket.socket, pattern: bytes) -> bytes:
    """Read the gdb remote protocol stream until a packet ($data#checksum) whose data matches
    pattern. qemu also sends packets of its own, unasked: a stop reply ($T02...) when gdb
    connects and the node stops, so the first packet is not necessarily the answer."""
    data = b""
    while True:
        found = re.search(rb"\$(" + pattern + rb")#[0-9a-f]{2}", data)
        if found:
            return found.group(1)
        chunk = s.recv(4096)
        assert chunk, f"the stub hung up after {data!r}"
        data += chunk


def test_each_node_has_a_gdb_stub(cluster):
    """The gdb remote protocol answers on the node's socket; detaching lets the node run on."""
    path = gdb_socket(cluster.cfg, f"{TAG}a")
    assert str(path) in cluster.doit("status").stdout
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(b"$qSupported#37")
        assert gdb_reply(s, rb"PacketSize=[^#]*"), "qemu's stub describes itself"
        s.sendall(b"+$D#44")  # acknowledge, detach
        assert gdb_reply(s, rb"OK") == b"OK"
    # gdb's connection stopped the node; qemu resumes it on the detach, and its agent answers
    # once the guest has caught up (a second or two here; seconds more on a loaded host).
    deadline = time.monotonic() + 60
    while not cluster.virt.agent_answers(cluster.dom("a")) and time.monotonic() < deadline:
        time.sleep(1)
    assert cluster.virt.agent_answers(cluster.dom("a")), "detached: the node runs on"


def test_a_rebuilt_kernel_stales_exactly_the_definitions_and_restart_boots_it(cluster, own, kernels):
    shutil.copyfile(own / f"boot/vmlinuz-{kernels[1]}", own / "bzImage")  # `make bzImage` again
    run = cluster.doit()
    done = sorted(re.findall(r"^\.  (\S+)", run.stdout, re.M))
    assert done == sorted(["kernel", f"define:{TAG}a", f"define:{TAG}b"])
    ids = {s: cluster.dom(s).ID() for s in "ab"}
    cluster.doit("restart")
    assert all(cluster.dom(s).ID() != ids[s] for s in "ab"), "both restarted"
    for release in on_each(cluster, "uname -r").values():
        assert release.strip() == kernels[1]


def test_reset_puts_disks_and_fam_back(cluster):
    cluster.doit("pssh", "--on", "b", "echo scratch > /root/scratch; sync")
    guest.write_block(cluster.virt, cluster.dom("a"), 5, b"written on the device".ljust(4096, b"\0"))
    refused = one_error_line(cluster.doit("reset", check=False))
    assert "doit shutdown first" in refused
    cluster.doit("destroy")  # off, the quick way: graceful shutdowns have tests of their own
    # A snapshot of the user's built on b's disk: a reset would swap the disk under its data.
    disk_b = cluster.disk("b")
    snapshot = cluster.cfg.data_dir / "b-before-reset.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk_b), "-F", "qcow2",
                    str(snapshot)], check=True)
    block_5 = fam.namespace(cluster.cfg.fam_path)["data_offset"] + 5 * 4096
    try:
        inode = disk_b.stat().st_ino
        refused = one_error_line(cluster.doit("reset", check=False))
        assert f"{snapshot} is built on {disk_b}" in refused and "qemu-img convert" in refused
        assert disk_b.stat().st_ino == inode, "b's disk not replaced"
        with open(cluster.cfg.fam_path, "rb") as f:
            assert os.pread(f.fileno(), 21, block_5) == b"written on the device", "the FAM not reset"
    finally:
        snapshot.unlink()
    run = cluster.doit("reset")
    assert "discarded" in run.stderr
    golden = reset.golden(cluster.cfg).read_bytes()
    assert cluster.cfg.fam_path.read_bytes() == golden, "byte for byte the golden copy"
    cluster.doit("start")
    gone = cluster.doit("pssh", "--on", "b", "test ! -e /root/scratch")
    assert f"{TAG}b: exit 0" in gone.stdout
    cluster.doit("verify")
