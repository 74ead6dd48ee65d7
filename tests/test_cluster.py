"""The real thing: `doit` on qemu:///system, real Debian guests booted under TCG.

One cluster (conftest.first_cluster) is taken through what a user does first: doit, doit
again, virsh undefine, doit clone, doit start, doit verify, adding and removing a clone. It is
left running for test_cluster_living.py, next in file order, which lives in it and ends it
(doit shutdown, doit clean). In file order each test finds the cluster as the one before left
it, so nothing is built or booted twice; but every test asks for the state it starts from
(built, three nodes, running, ...) through a fixture that makes it when it is not there, so any
test also runs alone (`pytest tests/test_cluster.py::test_start_then_verify`). The network is
isolated (forward none), inside the network namespace scripts/setup runs libvirtd in.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess

import libvirt
import pytest

from dali import accel, disks, fam, guest, image
from dali.marks import mark_of
from dali.storage.local import backing_file
from support.cluster import FIRST_TAG, ClusterUnderTest
from support.doit import one_error_line

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

TAG = FIRST_TAG
FSDAX_SIZE_OF_1G = 1054867456  # measured by hand: the seed's "1006.00 MiB (1054.87 MB)"


def executed(run: subprocess.CompletedProcess) -> list[str]:
    """The tasks doit ran: it prints '.  <task>' for each."""
    return re.findall(r"^\.  (\S+)", run.stdout, flags=re.M)


def is_off(dom) -> bool:
    return dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


@pytest.fixture
def cluster(first_cluster):
    return first_cluster


def defined(c: ClusterUnderTest, suffix: str) -> bool:
    try:
        c.dom(suffix)
        return True
    except libvirt.libvirtError:
        return False


def add_d_and_e(c: ClusterUnderTest) -> None:
    """What test_adding_a_clone_touches_no_other_node does: d linked, then e a copy."""
    c.set(clones=["b", "c", "d"], clone={"mode": "linked"})
    c.doit("clone")
    c.set(clones=["b", "c", "d", "e"], clone={"mode": "copy"})
    c.doit("clone")


@pytest.fixture
def with_d_and_e(running):
    """Clones d and e defined beside the running a, b and c."""
    if not (defined(running, "d") and defined(running, "e")):
        add_d_and_e(running)
    return running


@pytest.fixture
def d_and_e_removed(running):
    """d and e left the config: undefined, their disks kept (as test_a_removed_clone_... leaves it)."""
    c = running
    if defined(c, "d") or defined(c, "e") or not (c.disk("d").exists() and c.disk("e").exists()):
        if not (defined(c, "d") and defined(c, "e")):
            add_d_and_e(c)
        c.set(clones=["b", "c"], clone={"mode": "linked"})
        c.doit()
    return c


def test_doit_prepares_the_original(cluster):
    cluster.doit()
    dom = cluster.dom("a")
    assert is_off(dom), "the original ends shut off, ready for cloning"
    assert mark_of(dom.XMLDesc(0))["id"] == cluster.cfg.id
    if not accel.offers_kvm(cluster.virt):  # like this project's CI: /dev/kvm, but no vmx/svm
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

    # Only as open as qemu needs: disks and image for root and qemu's group, the key root's.
    for path in (cluster.disk("a"), disks.base_disk(cluster.cfg, cluster.files), image.kernel(cluster.files)):
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0, path
    assert stat.S_IMODE(cluster.cfg.ssh_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cluster.cfg.state_dir.stat().st_mode) == 0o700


def test_the_kvm_probe_tells_a_booting_kernel_from_a_hanging_one(built):
    cluster = built
    kernel = image.kernel(cluster.files)
    # A generous limit for the positive control: TCG on a busy host is slow to print the banner.
    assert accel.boots(cluster.cfg, cluster.virt, kernel, "qemu", seconds=120), "the image's kernel starts under TCG"
    if not accel.offers_kvm(cluster.virt):
        assert not accel.boots(cluster.cfg, cluster.virt, kernel, "kvm"), "this host's KVM must be found unusable"


def test_second_doit_executes_nothing(built):
    cluster = built
    run = cluster.doit()
    assert executed(run) == []


def test_undefined_domain_is_defined_again(built):
    cluster = built
    cluster.dom("a").undefine()  # as `virsh undefine dalitesta`
    run = cluster.doit()
    assert executed(run) == [f"define:{TAG}a"]
    assert is_off(cluster.dom("a"))


def test_doit_clone_makes_linked_clones(built):
    cluster = built
    cluster.set(clones=["b", "c"])
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


def test_a_changed_recipe_keeps_the_image_the_nodes_are_built_on(built):
    """A dali upgrade, or image.extra_packages, changes the recipe: replacing base.qcow2 would
    corrupt the disks built on it, so it is kept (no debootstrap either), and status says so."""
    cluster = built
    base = disks.base_disk(cluster.cfg, cluster.files).stat().st_ino
    cluster.set(image={"extra_packages": ["less"]})
    try:
        run = cluster.doit()
        assert executed(run) == []
        assert disks.base_disk(cluster.cfg, cluster.files).stat().st_ino == base
        assert "built from an older recipe" in cluster.doit("status").stdout
    finally:
        cluster.set(image={"extra_packages": []})


def test_start_then_verify(three_nodes):
    cluster = three_nodes
    run = cluster.doit("start")
    for s in "abc":
        assert f"{TAG}{s}: guest agent answered" in run.stderr + run.stdout
        assert not is_off(cluster.dom(s))
    # ndctl in a clone reports what the host reads from the FAM: one namespace, fsdax.
    ns = guest.namespace(cluster.virt, cluster.dom("b"))
    on_fam = fam.namespace(cluster.cfg.fam_path)
    assert ns["dev"] == "namespace0.0" and ns["mode"] == "fsdax" and ns["blockdev"] == "pmem0"
    assert ns["size"] == FSDAX_SIZE_OF_1G and ns["uuid"] == on_fam["uuid"]
    run = cluster.doit("verify")
    for s in "abc":
        row = next(line for line in run.stdout.splitlines() if line.startswith(f"{TAG}{s} "))
        assert row.split()[-1] == "ok", row
        assert "fsdax" in row and str(FSDAX_SIZE_OF_1G) in row


def test_write_on_a_clone_is_read_on_the_original_and_in_the_fam(running):
    cluster = running
    virt = cluster.virt
    b, a = cluster.dom("b"), cluster.dom("a")
    marker = b"written on the clone " + os.urandom(8).hex().encode()
    block = marker + bytes(4096 - len(marker))
    guest.write_block(virt, b, 777, block)
    assert guest.read_block(virt, a, 777) == block
    # The same bytes, read on the host at the device's offset in the FAM: what verify relies on
    # to put bytes back after a kill.
    with open(cluster.cfg.fam_path, "rb") as f:
        offset = fam.namespace(cluster.cfg.fam_path)["data_offset"] + 777 * 4096
        assert os.pread(f.fileno(), 4096, offset) == block


def test_a_killed_verify_has_its_bytes_put_back(running):
    """verify records what it overwrites before writing; the next verify (or doit) puts it back."""
    cluster = running
    a = cluster.dom("a")
    original = guest.read_block(cluster.virt, a, 999)
    offset = fam.namespace(cluster.cfg.fam_path)["data_offset"] + 999 * 4096
    fam.save_before_write(cluster.cfg, cluster.files, {offset: original}, until=0)  # (nothing left running)
    guest.write_block(cluster.virt, a, 999, b"verify's marker".ljust(4096, b"\0"))  # ...killed here
    cluster.doit("verify")
    assert guest.read_block(cluster.virt, a, 999) == original
    assert not fam.has_saved(cluster.cfg)


def test_verify_writes_nothing_on_a_device_with_a_filesystem(running):
    cluster = running
    a = cluster.dom("a")
    cluster.virt.run(a, ["mkfs.ext4", "-q", "-F", "/dev/pmem0"]).check("mkfs.ext4")
    try:
        before = cluster.cfg.fam_path.read_bytes()
        line = one_error_line(cluster.doit("verify", check=False))
        assert "ext4" in line and "writes nothing" in line
        assert cluster.cfg.fam_path.read_bytes() == before
    finally:
        cluster.virt.run(a, ["wipefs", "-a", "-q", "/dev/pmem0"]).check("wipefs")


def snapshot(cluster, suffixes):
    """What adding or removing a clone must leave alone: each node's run, definition, disk."""
    out = {}
    for s in suffixes:
        d = cluster.dom(s)
        out[s] = (d.ID(), d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), cluster.disk(s).stat().st_ino)
    return out


def test_adding_a_clone_touches_no_other_node(running):
    cluster = running
    before = snapshot(cluster, "abc")
    cluster.set(clones=["b", "c", "d"])
    run = cluster.doit("clone")
    # Its own four tasks (disk, identity disk, definition), plus its address: a host entry added
    # to the running network in place, and its line in ssh_config and the inventory.
    assert sorted(executed(run)) == sorted([f"disk:{TAG}d", f"identity:{TAG}d", f"render:{TAG}d",
                                            f"define:{TAG}d", "network", "access"])
    assert snapshot(cluster, "abc") == before
    assert backing_file(cluster.disk("d")) == str(cluster.cfg.frozen_disk)

    # A copy clone is a whole, independent disk, made from the same frozen state.
    cluster.set(clones=["b", "c", "d", "e"], clone={"mode": "copy"})
    run = cluster.doit("clone")
    assert sorted(executed(run)) == sorted([f"disk:{TAG}e", f"identity:{TAG}e", f"render:{TAG}e",
                                            f"define:{TAG}e", "network", "access"])
    assert backing_file(cluster.disk("e")) is None
    assert snapshot(cluster, "abc") == before


def test_a_removed_clone_is_undefined_and_its_disk_kept(with_d_and_e):
    cluster = with_d_and_e
    before = snapshot(cluster, "abc")
    cluster.set(clones=["b", "c"], clone={"mode": "linked"})
    run = cluster.doit()
    assert sorted(executed(run)) == ["access", "prune"]  # and their lines leave ssh_config
    for s in "de":
        with pytest.raises(libvirt.libvirtError):
            cluster.dom(s)
        assert cluster.disk(s).exists(), "a node's disk is its work: kept until asked"
        assert f"doit remove:{TAG}{s}" in run.stderr
    assert snapshot(cluster, "abc") == before


def test_remove_deletes_a_removed_nodes_disk_on_request(d_and_e_removed):
    cluster = d_and_e_removed
    listed = cluster.doit("list", "--all").stdout
    assert f"remove:{TAG}d" in listed and f"remove:{TAG}e" in listed
    cluster.doit(f"remove:{TAG}d")
    assert not cluster.disk("d").exists() and cluster.disk("e").exists()
    cluster.doit(f"remove:{TAG}e")
    assert not cluster.disk("e").exists()
    assert f"remove:{TAG}" not in cluster.doit("list", "--all").stdout


def test_a_running_removed_clone_is_left_alone(running):
    cluster = running
    cluster.set(clones=["b"])
    try:
        run = cluster.doit()
        assert "running; left alone" in run.stderr + run.stdout
        assert not is_off(cluster.dom("c"))
    finally:
        cluster.set(clones=["b", "c"])
        cluster.doit()  # c back in ssh_config and the inventory, as the next tests find it
