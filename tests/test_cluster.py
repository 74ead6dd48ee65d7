"""The real thing: `doit` on qemu:///system, real Debian guests booted under TCG.

One cluster, built once for this module and torn down at the end (also when a test fails), is
taken through what a user does: doit, doit again, virsh undefine, doit clone, doit start,
doit verify, adding and removing a clone, doit shutdown, doit clean. The tests run in file
order and each builds on the state the previous one left. The network is isolated
(forward none), inside the network namespace scripts/setup runs libvirtd in.
"""

from __future__ import annotations

import grp
import json
import os
import re
import stat
import subprocess
import textwrap
from pathlib import Path

import libvirt
import pytest

from conftest import run_doit
from dali import accel, fam, guest, settings
from dali.marks import mark_of
from dali.virt import Libvirt

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

TAG = "dalitest"
FSDAX_SIZE_OF_1G = 1054867456  # measured by hand: the seed's "1006.00 MiB (1054.87 MB)"


class TestCluster:
    """The test cluster's config file, and doit run on it the way a user would."""

    __test__ = False  # not a test class for pytest

    def __init__(self, path: Path):
        self.path = path
        self.set(clones=[], mode="linked")
        self.cfg = settings.load(path, env={})
        self.virt = Libvirt("qemu:///system", TAG)

    def set(self, clones: list[str], mode: str) -> None:
        self.path.write_text(textwrap.dedent(f"""\
            tag = "{TAG}"
            original = "a"
            clones = {json.dumps(clones)}
            accel = "auto"
            [network]
            name = "{TAG}"
            forward = "none"
            address = "192.168.213.254"
            prefix = 24
            dhcp_start = "192.168.213.1"
            dhcp_end = "192.168.213.20"
            [clone]
            mode = "{mode}"
            [timeouts]
            boot = 900
            shutdown = 120
        """))
        self.cfg = settings.load(self.path, env={})

    def doit(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        run = run_doit(*args, f"config={self.path}")
        if check:
            assert run.returncode == 0, run.stdout + run.stderr
        return run

    def dom(self, suffix: str):
        return self.virt.conn.lookupByName(TAG + suffix)

    def disk(self, suffix: str) -> Path:
        return self.cfg.data_dir / f"{TAG}{suffix}.qcow2"


def executed(run: subprocess.CompletedProcess) -> list[str]:
    """The tasks doit ran: it prints '.  <task>' for each."""
    return re.findall(r"^\.  (\S+)", run.stdout, flags=re.M)


def is_off(dom) -> bool:
    return dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def backing_file(path: Path) -> str | None:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                                     capture_output=True, text=True, check=True).stdout)
    return info.get("backing-filename")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = TestCluster(tmp_path_factory.mktemp("dalitest") / "cluster.toml")
    yield c
    # Teardown even after a failure: doit clean, then anything carrying our mark.
    c.doit("clean", check=False)
    for dom in c.virt.our_domains().values():
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_doit_prepares_the_original(cluster):
    cluster.doit()
    dom = cluster.dom("a")
    assert is_off(dom), "the original ends shut off, ready for cloning"
    assert mark_of(dom.XMLDesc(0)) == TAG
    if not accel.cpu_has_virtualisation():  # like this project's CI: /dev/kvm, but no vmx/svm
        assert dom.XMLDesc(0).startswith("<domain type='qemu'"), "auto must not pick KVM here"

    fam_stat = cluster.cfg.fam_path.stat()
    assert fam_stat.st_size == 1 << 30
    assert grp.getgrgid(fam_stat.st_gid).gr_name == "libvirt-qemu"
    assert stat.S_IMODE(fam_stat.st_mode) == 0o664

    template = cluster.cfg.apparmor_template
    assert f'"{cluster.cfg.fam_path}" rw,' in template.read_text()
    parse = subprocess.run(["apparmor_parser", "-Q", "-K", "--skip-cache", str(template)],
                           capture_output=True, text=True)
    assert parse.returncode == 0, parse.stderr

    # What ndctl made inside the guest is in the FAM itself: the info block of an fsdax
    # namespace, read on the host with no guest running.
    ns = fam.namespace(cluster.cfg.fam_path)
    assert ns["mode"] == "fsdax" and ns["size"] == FSDAX_SIZE_OF_1G


def test_the_kvm_probe_tells_a_booting_kernel_from_a_hanging_one(cluster):
    kernel = cluster.cfg.image_dir / "vmlinuz"
    assert accel.guest_boots(kernel, "tcg"), "the image's kernel starts under TCG"
    if not accel.cpu_has_virtualisation():
        assert not accel.guest_boots(kernel, "kvm"), "this host's KVM must be found unusable"


def test_second_doit_executes_nothing(cluster):
    run = cluster.doit()
    assert executed(run) == []


def test_undefined_domain_is_defined_again(cluster):
    cluster.dom("a").undefine()  # as `virsh undefine dalitesta`
    run = cluster.doit()
    assert executed(run) == [f"define:{TAG}a"]
    assert is_off(cluster.dom("a"))


def test_doit_clone_makes_linked_clones(cluster):
    cluster.set(clones=["b", "c"], mode="linked")
    run = cluster.doit("clone")
    assert {f"define:{TAG}b", f"define:{TAG}c", "freeze"} <= set(executed(run))
    frozen = cluster.cfg.frozen_disk
    assert backing_file(cluster.disk("a")) == str(frozen), "the original keeps a disk of its own"
    for s in "bc":
        assert backing_file(cluster.disk(s)) == str(frozen)
    doms = [cluster.dom(s) for s in "abc"]
    assert len({d.UUIDString() for d in doms}) == 3
    macs = {re.search(r"mac address='([^']+)'", d.XMLDesc(0)).group(1) for d in doms}
    assert len(macs) == 3
    for d in doms:
        assert cluster.cfg.fam_path.as_posix() in d.XMLDesc(0)


def test_start_then_verify(cluster):
    run = cluster.doit("start")
    for s in "abc":
        assert f"{TAG}{s}: guest agent answered" in run.stderr + run.stdout
        assert not is_off(cluster.dom(s))
    # ndctl in a clone reports what the host reads from the FAM: one namespace, fsdax.
    ns = guest.namespace(cluster.virt, cluster.dom("b"))
    assert ns["dev"] == "namespace0.0" and ns["mode"] == "fsdax" and ns["blockdev"] == "pmem0"
    assert ns["size"] == FSDAX_SIZE_OF_1G and ns["uuid"] == fam.namespace(cluster.cfg.fam_path)["uuid"]
    run = cluster.doit("verify")
    table = run.stdout
    for s in "abc":
        row = next(line for line in table.splitlines() if line.startswith(f"{TAG}{s} "))
        assert row.split()[-1] == "ok", row
        assert "fsdax" in row and str(FSDAX_SIZE_OF_1G) in row


def test_write_on_a_clone_is_read_on_the_original(cluster):
    virt = cluster.virt
    b, a = cluster.dom("b"), cluster.dom("a")
    marker = b"written on the clone " + os.urandom(8).hex().encode()
    block = marker + bytes(4096 - len(marker))
    virt.run(b, ["dd", "of=/dev/pmem0", "bs=4096", "seek=777", "count=1", "oflag=direct",
                 "conv=notrunc", "status=none"], stdin=block).check("dd on the clone")
    seen = virt.run(a, ["dd", "if=/dev/pmem0", "bs=4096", "skip=777", "count=1", "iflag=direct",
                        "status=none"]).check("dd on the original")
    assert seen.stdout.encode()[:len(marker)] == marker


def snapshot(cluster, suffixes):
    """What adding or removing a clone must leave alone: each node's run, definition, disk."""
    out = {}
    for s in suffixes:
        d = cluster.dom(s)
        out[s] = (d.ID(), d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), cluster.disk(s).stat().st_ino)
    return out


def test_adding_a_clone_touches_no_other_node(cluster):
    before = snapshot(cluster, "abc")
    cluster.set(clones=["b", "c", "d"], mode="linked")
    run = cluster.doit("clone")
    assert sorted(executed(run)) == sorted([f"disk:{TAG}d", f"render:{TAG}d", f"define:{TAG}d"])
    assert snapshot(cluster, "abc") == before
    assert backing_file(cluster.disk("d")) == str(cluster.cfg.frozen_disk)

    # A copy clone is a whole, independent disk, made from the same frozen state.
    cluster.set(clones=["b", "c", "d", "e"], mode="copy")
    run = cluster.doit("clone")
    assert sorted(executed(run)) == sorted([f"disk:{TAG}e", f"render:{TAG}e", f"define:{TAG}e"])
    assert backing_file(cluster.disk("e")) is None
    assert snapshot(cluster, "abc") == before


def test_removing_clones_removes_only_them(cluster):
    before = snapshot(cluster, "abc")
    cluster.set(clones=["b", "c"], mode="linked")
    run = cluster.doit()
    assert executed(run) == ["prune"]
    for s in "de":
        with pytest.raises(libvirt.libvirtError):
            cluster.dom(s)
        assert not cluster.disk(s).exists()
    assert snapshot(cluster, "abc") == before


def test_a_running_removed_clone_is_left_alone(cluster):
    cluster.set(clones=["b"], mode="linked")
    run = cluster.doit()
    assert "running; left alone" in run.stderr + run.stdout
    assert not is_off(cluster.dom("c"))
    cluster.set(clones=["b", "c"], mode="linked")


def test_shutdown(cluster):
    cluster.doit("shutdown")
    for s in "abc":
        assert is_off(cluster.dom(s))


def test_clean_dry_run_says_what_it_would_remove_and_removes_nothing(cluster):
    run = cluster.doit("clean", "-n")
    said = run.stdout + run.stderr
    for s in "abc":
        assert f"would shut down and undefine {TAG}{s}" in said
        assert f"would remove {cluster.disk(s)}" in said
    assert f"would remove {cluster.cfg.fam_path}" in said
    assert f"would remove network {TAG}" in said
    for s in "abc":
        assert cluster.dom(s) and cluster.disk(s).exists()
    assert cluster.cfg.fam_path.exists() and cluster.cfg.state_dir.exists()


def test_clean_leaves_nothing(cluster):
    run = cluster.doit("clean", "--forget")
    # Clean actions read as sentences, and what they did reaches the user.
    assert f"executing 'shut down and undefine {TAG}a'" in run.stdout
    assert f"{TAG}a: already off, undefined" in run.stderr
    conn = cluster.virt.conn
    assert [d.name() for d in conn.listAllDomains() if d.name().startswith(TAG)] == []
    assert TAG not in [n.name() for n in conn.listAllNetworks()]
    assert not cluster.cfg.data_dir.exists()  # FAM, disks, frozen disk, image
    assert not cluster.cfg.state_dir.exists()
    assert "Traceback" not in run.stdout + run.stderr
    template = cluster.cfg.apparmor_template.read_text()
    assert str(cluster.cfg.fam_path) not in template
    parse = subprocess.run(["apparmor_parser", "-Q", "-K", "--skip-cache",
                            str(cluster.cfg.apparmor_template)], capture_output=True, text=True)
    assert parse.returncode == 0, parse.stderr
