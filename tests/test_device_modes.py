"""The shared device's other shapes, on qemu:///system with real guests: libvirt's own NVDIMM
device (device.style = "native") with the host's AppArmor template left byte-identical, a
refused mode change that leaves the FAM untouched, and devdax made on purpose on a new FAM, where
the cases of non-coherent memory all go unseen (test_coherence.py's control), and a snapshot and
a rollback of its nodes."""

from __future__ import annotations

import hashlib
import os

import libvirt
import pytest

from dali import fam, guest
from support import famlines
from support.cluster import ClusterUnderTest, torture_table, unique_tag
from support.doit import one_error_line

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

TAG = unique_tag("dalidax")


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def template(c) -> bytes:
    """The host's AppArmor template, without the lines other dali clusters (a user's, running
    beside the tests) may add or remove meanwhile."""
    lines = c.cfg.apparmor_template.read_bytes().splitlines(keepends=True)
    return b"".join(line for line in lines if b"# dali cluster " not in line or f"# dali cluster {TAG}:".encode() in line)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ClusterUnderTest(tmp_path_factory.mktemp(TAG) / "cluster.toml", TAG, clones=["b"],
                         device={"style": "native", "mode": "fsdax"})
    c.template_before = template(c)
    yield c
    c.teardown()


def test_native_style_makes_the_namespace_and_leaves_the_template_alone(cluster):
    """The original made the fsdax namespace through libvirt's own device. Nodes sharing it at
    run time, and verify, are test_devdax_on_a_new_fam_on_purpose's (native, devdax) and
    test_remote.py's (native, fsdax, three nodes, OCFS2)."""
    cluster.doit()
    for s in "ab":
        xml = cluster.dom(s).XMLDesc(0)
        assert "<memory model='nvdimm' access='shared'>" in xml and "qemu:commandline" not in xml
    ns = fam.namespace(cluster.cfg.fam_path)
    assert (ns["mode"], ns["size"]) == ("fsdax", 1054867456)
    assert template(cluster) == cluster.template_before, "nothing of ours in the template"


def test_a_mode_change_on_a_fam_with_a_namespace_is_refused(cluster):
    cluster.doit("destroy")  # off, the quick way: graceful shutdowns have tests of their own
    before = digest(cluster.cfg.fam_path)
    cluster.set(device={"style": "native", "mode": "devdax"})
    line = one_error_line(cluster.doit(check=False))
    assert "holds a fsdax namespace" in line and "move the FAM away" in line
    assert digest(cluster.cfg.fam_path) == before, "the FAM is untouched, byte for byte"


def test_devdax_on_a_new_fam_on_purpose(cluster):
    os.rename(cluster.cfg.fam_path, cluster.cfg.fam_path.with_name("FAM.fsdax"))  # as the line says
    cluster.doit()
    ns = fam.namespace(cluster.cfg.fam_path)
    assert ns["mode"] == "devdax"
    cluster.doit("start")
    for s in "ab":
        seen = guest.namespace(cluster.virt, cluster.dom(s))
        assert (seen["mode"], seen["uuid"]) == ("devdax", ns["uuid"])
        assert cluster.virt.run(cluster.dom(s), ["test", "-c", "/dev/dax0.0"]).exitcode == 0
    run = cluster.doit("verify")  # its write test goes through mmap of /dev/dax0.0
    assert "devdax" in run.stdout
    torture = cluster.doit("torture", "--seconds", "8")  # mmap and block, through mappings
    rows = torture_table(torture)
    assert set(rows) == {"mmap", "block"}, torture.stdout
    assert all(int(r[1]) > 0 and r[2] == "0" for r in rows.values()), rows


def test_with_coherent_memory_every_missing_flush_goes_unseen(cluster, tmp_path):
    """The control of test_coherence.py, on this devdax cluster with device.coherence off: a
    writer that never writes its line back, a reader that never invalidates, two writers on one
    line: the reader always sees the right bytes, because the nodes share the host's coherent
    caches. On the hardware a FAM stands for, each is a bug; test_coherence.py finds them."""
    famlines.install(cluster, famlines.build(tmp_path))
    famlines.play_every_case(cluster)
    assert not cluster.cfg.coherence_model.exists()


def test_a_snapshot_and_a_rollback_in_the_native_style(cluster):
    """libvirt's own NVDIMM (`<memory model='nvdimm'>`) in a node's memory snapshot: taken paused
    and resumed, restored paused and resumed (docs/snapshots.md; test_snapshots.py has the seed
    style, on OCFS2). What a node wrote after the snapshot is gone, and the device works."""
    cluster.doit("snapshot", "native")
    for s in "ab":
        assert cluster.virt.run(cluster.dom(s), ["sh", "-c", "echo later > /root/after; sync"]).exitcode == 0
    cluster.doit("rollback", "native")
    for s in "ab":
        assert cluster.dom(s).state()[0] == libvirt.VIR_DOMAIN_RUNNING, s
        assert cluster.virt.run(cluster.dom(s), ["test", "-e", "/root/after"]).exitcode == 1, s
        assert cluster.virt.run(cluster.dom(s), ["test", "-c", "/dev/dax0.0"]).exitcode == 0, s
    assert "devdax" in cluster.doit("verify").stdout


def test_the_template_was_never_touched(cluster):
    cluster.doit("destroy")
    cluster.doit("clean")
    assert template(cluster) == cluster.template_before
