"""A cluster on another libvirt host, driven from this checkout (docs/remote.md).

The "remote host" is a second libvirtd on this machine (tests/support/remote_host.py): its own network
namespace, and its own mount namespace in which /var/lib/libvirt, /run/libvirt and
/var/lib/dali are directories of its own. A file dali wrote on this machine instead of through
libvirt would simply not be there for its VMs, and the test would fail. A local cluster runs
beside it all the while, and nothing of one touches the other: the suite's OCFS2 cluster
(conftest.ocfs2_cluster), running between test_shared_fs.py and test_torture.py (alone, this
module builds and starts it). Real libvirtd, real guests.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dali import fam, own_kernel
from support.cluster import ClusterUnderTest, unique_tag
from support.doit import one_error_line, run_until
from support.remote_host import RemoteHost

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

REMOTE, STRANGER, KILLED, OWN = (unique_tag("dalirem"), unique_tag("dalistr"), unique_tag("dalikil"),
                                 unique_tag("daliown"))


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    with RemoteHost(tmp_path_factory.mktemp("host")) as h:
        yield h


@pytest.fixture(scope="module")
def pair(host, tmp_path_factory, ocfs2_cluster):
    """The remote cluster (two nodes, OCFS2: a write on one read on the other needs no third)
    and the local OCFS2 cluster beside it, which test_torture.py goes on using: left as found."""
    remote = ClusterUnderTest(tmp_path_factory.mktemp(REMOTE) / "cluster.toml", REMOTE, remote=host,
                              clones=["b"], fs={"type": "ocfs2", "heartbeat_threshold": 11})
    yield remote, ocfs2_cluster
    remote.teardown()


def both(call, pair):
    """The same step on both clusters at once, each its own doit, as two users would type them."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(call, pair))


def said(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr


def on_host(host: RemoteHost, c: ClusterUnderTest) -> Path:
    """The remote cluster's directory as the remote host has it (its bind's source here)."""
    return host.data_root / c.tag


# --- a refusal first: it boots nothing -------------------------------------------------------------

def test_a_dir_there_with_files_dali_did_not_make_is_refused_leaving_nothing(host, tmp_path):
    stranger = ClusterUnderTest(tmp_path / "cluster.toml", STRANGER, remote=host)
    theirs = on_host(host, stranger)
    theirs.mkdir(mode=0o755)
    (theirs / "notes.txt").write_text("a user's\n")
    try:
        line = one_error_line(stranger.doit(check=False))
        assert "notes.txt" in line and "pick another dir" in line
        conn = stranger.virt.conn
        assert conn.listAllStoragePools() == [] and conn.listAllNetworks() == []
        assert conn.listAllDomains() == []
        assert (theirs / "notes.txt").read_text() == "a user's\n"
        assert not stranger.cfg.state_dir.exists() and not stranger.cfg.dep_file.exists()
        # A directory of the user's own storage pool (virsh pool-define-as ...): refused too.
        (theirs / "notes.txt").unlink()
        users = stranger.virt.conn.storagePoolDefineXML(
            f"<pool type='dir'><name>users</name><target><path>{stranger.data_dir}</path></target></pool>", 0)
        users.create(0)
        line = one_error_line(stranger.doit(check=False))
        assert "conflict with pool: 'users'" in line and "pick another dir" in line
        assert [p.name() for p in stranger.virt.conn.listAllStoragePools()] == ["users"]
        assert stranger.virt.conn.listAllNetworks() == []
        users.destroy()
        users.undefine()
    finally:
        (theirs / "notes.txt").unlink(missing_ok=True)
        theirs.rmdir()
        stranger.teardown()


def test_killed_uploading_or_cleaning_there_converges(host, tmp_path):
    """SIGKILL in the middle of the image's upload, then of a clean: the next run finishes the
    job, from what the pool holds then (doit's records of a killed run are lost)."""
    c = ClusterUnderTest(tmp_path / "cluster.toml", KILLED, remote=host)
    try:
        hit, _ = run_until(c, r"copying base\.qcow2", signal.SIGKILL, 0.3, "image:base")
        assert hit
        c.doit("image:base")
        cached = next(c.cfg.cache_dir.glob("image-*/base.qcow2"))
        there = on_host(host, c)
        for name in ("base.qcow2", "vmlinuz", "initrd.img"):
            assert (there / name).read_bytes() == (cached.parent / name).read_bytes(), name
        assert said(c.doit("image:base")).count("copying") == 0  # current: nothing sent again

        # A qcow2 of the user's built on base.qcow2, there: clean keeps both, and says why.
        keep = there / "keep.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b",
                        str(c.data_dir / "base.qcow2"), str(keep), "1G"], check=True)
        kept = c.doit("clean")
        assert "keep.qcow2 is built on it" in said(kept)
        assert (there / "base.qcow2").exists() and keep.exists()
        assert not (there / "vmlinuz").exists()
        keep.unlink()
        c.doit("image:base")
        hit, _ = run_until(c, r"removed file .*vmlinuz", signal.SIGKILL, 0, "clean")
        assert hit
        c.doit("clean")
        assert not there.exists() and c.virt.conn.listAllStoragePools() == []
        assert not c.cfg.state_dir.exists()
    finally:
        c.teardown()


def test_your_kernel_is_built_here_and_booted_there(host, tmp_path):
    """kernel.path with a remote uri: bzImage, its initramfs and its modules disk made here (in
    state/<tag>/kernel/), uploaded to the pool, and the original booted on them there (the only
    kernel its definition names): its guest agent answered and its ndctl made the fsdax
    namespace. (test_kernel_loop.py checks `uname -r` and the modules disk in running nodes.)"""
    from test_kernel_loop import two_kernel_packages
    version, deb = next(iter(two_kernel_packages().items()))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "X")], check=True)
    c = ClusterUnderTest(tmp_path / "cluster.toml", OWN, remote=host,
                         kernel={"path": str(tmp_path / "X" / "boot" / f"vmlinuz-{version}"),
                                 "modules": str(tmp_path / "X")},
                         device={"style": "native", "namespace_from": "original"})  # booted there, whatever the cache holds
    try:
        c.doit()
        there = on_host(host, c)
        for made in own_kernel.built(c.cfg):
            assert (there / made.name).read_bytes() == made.read_bytes(), made.name
        dom = c.dom("a").XMLDesc(0)
        assert f"<kernel>{c.cfg.data_dir}/bzImage</kernel>" in dom
        assert f"<initrd>{c.cfg.data_dir}/initramfs.cpio</initrd>" in dom
        assert fam.namespace(there / "FAM")["mode"] == "fsdax"
        assert not c.data_dir.exists()
    finally:
        c.teardown()


# --- the remote cluster, with a local one beside it --------------------------------------------------

def test_both_build_at_once_and_nothing_of_the_remote_one_is_written_here(pair, host):
    remote, local = pair
    runs = both(lambda c: c.doit(), pair)
    # The accelerator was decided where the nodes run, from what that libvirt host says of its
    # KVM (here: /dev/kvm, a CPU without vmx), so its nodes run under TCG.
    assert f"accel = auto: the libvirt host {remote.cfg.uri}" in said(runs[0])
    assert all(remote.dom(s).XMLDesc(0).startswith("<domain type='qemu'") for s in "ab")

    # The remote nodes are the remote libvirtd's only, and the local node the local one's.
    local_names = {d.name() for d in local.virt.conn.listAllDomains()}
    assert {REMOTE + s for s in "ab"}.isdisjoint(local_names) and local.tag + "a" in local_names
    assert {d.name() for d in remote.virt.conn.listAllDomains()} == {REMOTE + s for s in "ab"}

    # Every file of the remote cluster is on the remote host, none here: only state/<tag>/.
    there = set(host.run("ls", "-A", str(remote.data_dir), check=True).stdout.split())
    assert {"FAM", "base.qcow2", "vmlinuz", "initrd.img", "frozen.qcow2", "FAM.golden"} <= there
    assert {f"{REMOTE}{s}.{kind}" for s in "ab" for kind in ("qcow2", "identity")} <= there
    assert not remote.data_dir.exists(), "a file of the remote cluster was written on this machine"
    assert {p.name for p in remote.cfg.state_dir.iterdir()} >= {"xml", "ssh", "ssh_config", "hosts"}

    # The FAM there: allocated whole, as fallocate makes it, and holding the fsdax namespace.
    fam_there = on_host(host, remote) / "FAM"
    assert fam_there.stat().st_size == remote.cfg.fam_size
    assert fam_there.stat().st_blocks * 512 >= remote.cfg.fam_size
    assert fam.namespace(fam_there)["mode"] == "fsdax"
    # A second doit on each has nothing to do: every up-to-date check asks the remote pool.
    for again in both(lambda c: c.doit(), pair):
        assert re.findall(r"^\.  (\S+)", again.stdout, flags=re.M) == [], again.stdout


def test_both_run_verify_and_the_remote_one_mounts_ocfs2(pair):
    remote, local = pair
    both(lambda c: c.doit("start"), pair)  # the local one runs already: a start with nothing to do
    remote.doit("verify")  # through OCFS2, mounted by the start; the local one verifies at the end
    remote.doit("pssh", "--on", "a", "echo from-a > /data/hello")
    seen = remote.doit("pssh", "--on", "b", "cat", "/data/hello")
    assert "from-a" in said(seen)
    assert all(remote.dom(s).isActive() for s in "ab") and local.dom("a").isActive()


def test_ssh_and_pput_reach_the_nodes_through_the_remote_hosts_namespace(pair, host, tmp_path):
    remote, _ = pair
    config = remote.cfg.state_dir / "ssh_config"
    assert f"ProxyCommand ip netns exec {host.netns} nc %h %p" in config.read_text()
    out = subprocess.run(["ssh", "-F", str(config), REMOTE + "b", "hostname"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == REMOTE + "b", out.stderr
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(range(256)) * 64)
    remote.doit("pput", str(payload), "/root/payload")
    sums = remote.doit("pssh", "sha256sum", "/root/payload")
    assert said(sums).count(hashlib.sha256(payload.read_bytes()).hexdigest()) == 2


def test_status_torture_and_dump_there(pair, host):
    remote, _ = pair
    status = said(remote.doit("status"))
    rows = [line.split() for line in status.splitlines() if line.startswith(REMOTE)]
    assert [(r[0], r[1]) for r in rows] == [(REMOTE + s, "running") for s in "ab"], status
    assert all(r[5] == f"{r[0]}.qcow2" for r in rows), status  # each disk, as the remote pool has it
    assert f"on {remote.cfg.uri}" in status and "fsdax namespace" in status
    run = remote.doit("torture", "namespace", "--seconds", "5")
    reports = sorted((remote.cfg.state_dir / "runs").glob("*/report.md"))
    assert reports and "namespace" in reports[-1].read_text(), said(run)
    # Every node's console window was read back from the remote pool for the report.
    consoles = {p.name for p in reports[-1].parent.glob("console/*.log")}
    assert consoles == {f"{REMOTE}{s}.log" for s in "ab"}
    # A node's memory, dumped there and brought here; nothing of it left there.
    run = remote.doit("dump", "b")
    where = Path(re.search(r"the dumps are in (\S+)", said(run)).group(1))
    release = remote.virt.run(remote.dom("b"), ["uname", "-r"]).stdout.strip()
    crash = subprocess.run(["crash", "--osrelease", str(where / f"{REMOTE}b.kdump")],
                           capture_output=True, text=True, timeout=300)
    assert crash.stdout.strip() == release, crash.stdout + crash.stderr
    assert not [p for p in on_host(host, remote).iterdir() if "dump" in p.name]


def test_reset_puts_the_fam_back_there(pair, host):
    remote, local = pair
    remote.doit("destroy")  # off, the quick way: graceful shutdowns have tests of their own
    fam_there = on_host(host, remote) / "FAM"
    start = fam.namespace(fam_there)["data_offset"]
    with open(fam_there, "rb") as f:
        f.seek(start)
        assert f.read(1 << 20) != bytes(1 << 20)  # OCFS2's superblock and more
    # A snapshot of the user's, made on the server, built on b's disk: the reset is refused.
    snapshot = on_host(host, remote) / "b-before-reset.qcow2"
    # (-u: the backing path is the server's, not readable here; so the size is given)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(remote.disk("b")),
                    "-F", "qcow2", str(snapshot), "1G"], check=True)
    try:
        refused = one_error_line(remote.doit("reset", check=False))
        assert f"{remote.cfg.data_dir}/{snapshot.name} on {remote.cfg.uri} is built on" in refused
        with open(fam_there, "rb") as f:
            f.seek(start)
            assert f.read(1 << 20) != bytes(1 << 20), "nothing reset"
    finally:
        snapshot.unlink()
    remote.doit("reset")
    with open(fam_there, "rb") as f:
        f.seek(start)
        assert f.read(1 << 20) == bytes(1 << 20)
    assert fam.namespace(fam_there)["mode"] == "fsdax"
    assert local.dom("a").isActive()


def test_clean_removes_only_what_dali_made_there_and_leaves_the_local_cluster(pair, host):
    remote, local = pair
    mine = on_host(host, remote) / "notes.txt"
    mine.write_text("the user's\n")
    remote.doit("destroy")
    first = remote.doit("clean")
    assert "notes.txt" in said(first)  # said why the directory stays
    assert mine.read_text() == "the user's\n"
    # dali's files are gone; its marker stays with the pool, which says whose it is.
    assert sorted(p.name for p in mine.parent.iterdir()) == [".dali-cluster.json", "notes.txt"]
    assert remote.virt.conn.listAllDomains() == [] and remote.virt.conn.listAllNetworks() == []
    mine.unlink()
    remote.doit("clean")
    assert not mine.parent.exists(), "the directory libvirt made for the pool stays"
    assert remote.virt.conn.listAllStoragePools() == []
    assert not remote.cfg.state_dir.exists()
    # The local cluster never noticed.
    assert local.dom("a").isActive() and local.cfg.fam_path.exists()
    local.doit("verify")
