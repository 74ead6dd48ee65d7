"""The shared device's other shapes, on qemu:///system with real guests: libvirt's own NVDIMM
device (device.style = "native") with the host's AppArmor template left byte-identical; devdax,
where the cases of non-coherent memory all go unseen (test_coherence.py's control), and a
snapshot and a rollback of its nodes; a refused mode change that leaves the FAM untouched; and a
clean that takes what the cluster made in every mode, the checker's model too, and leaves the
FAM the user moved away.

On conftest.dax_cluster, after test_coherence.py (tests/support/schedule.py), which leaves it
running checked on devdax, its fsdax FAM moved away on purpose; alone, this module makes it on
devdax from nothing."""

from __future__ import annotations

import hashlib

import libvirt
import pytest

from dali import fam, guest
from dali.coherence import model
from support import famlines
from support.cluster import template_without_other_clusters, torture_table
from support.doit import one_error_line

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def cluster(dax_cluster):
    """conftest.dax_cluster on devdax, unchecked, running."""
    c = dax_cluster
    if any(dom.isActive() for dom in c.virt.our_domains().values()):
        c.doit("destroy")  # off, the quick way: they run checked, and boot again unchecked
    c.set(device={"style": "native", "mode": "devdax"}, fs={"type": "none"})
    c.doit()
    c.doit("start")
    return c


def test_native_style_makes_the_namespace_and_leaves_the_template_alone(cluster):
    """The original made the devdax namespace through libvirt's own device, and every node sees
    that one. (fsdax through it, with OCFS2: test_coherence.py, test_remote.py.)"""
    ns = fam.namespace(cluster.cfg.fam_path)
    assert ns["mode"] == "devdax"
    for s in "ab":
        xml = cluster.dom(s).XMLDesc(0)
        assert "<memory model='nvdimm' access='shared'>" in xml and "qemu:commandline" not in xml
        seen = guest.namespace(cluster.virt, cluster.dom(s))
        assert (seen["mode"], seen["uuid"], seen["size"]) == ("devdax", ns["uuid"], ns["size"])
        assert cluster.virt.run(cluster.dom(s), ["test", "-c", "/dev/dax0.0"]).exitcode == 0
    assert template_without_other_clusters(cluster) == cluster.template_before, "nothing of ours in the template"


def test_devdax_nodes_share_the_device(cluster):
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
    model_file = cluster.cfg.coherence_model  # test_coherence.py's, when it ran first
    counted = model.counters(model_file) if model_file.exists() else None
    famlines.install(cluster, famlines.build(tmp_path))
    famlines.play_every_case(cluster)
    for s in "ab":
        assert str(model_file) not in cluster.dom(s).XMLDesc(0), "no plugin in an unchecked node"
    if counted is None:
        assert not model_file.exists(), "checking off makes no model"
    else:
        assert model.counters(model_file) == counted, "nothing counted: no node checks"


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


def test_a_mode_change_on_a_fam_with_a_namespace_is_refused(cluster):
    cluster.doit("destroy")  # off, the quick way: graceful shutdowns have tests of their own
    before = digest(cluster.cfg.fam_path)
    cluster.set(device={"style": "native", "mode": "fsdax"})
    line = one_error_line(cluster.doit(check=False))
    assert "holds a devdax namespace" in line and "move the FAM away" in line
    assert digest(cluster.cfg.fam_path) == before, "the FAM is untouched, byte for byte"
    cluster.set(device={"style": "native", "mode": "devdax"})


def test_clean_takes_what_it_made_and_the_template_was_never_touched(cluster):
    """Everything of the cluster's goes, the coherence model left from test_coherence.py too;
    the FAM that module moved away (as dali's refusal says) is the user's now, and stays."""
    moved = cluster.cfg.fam_path.with_name("FAM.fsdax")
    kept = digest(moved) if moved.exists() else None
    cluster.doit("clean")
    assert not cluster.cfg.fam_path.exists() and not cluster.cfg.coherence_model.exists()
    assert not (cluster.cfg.data_dir / "snapshots" / "native").exists()
    if kept is not None:
        assert digest(moved) == kept, "a renamed FAM is not dali's to remove"
    assert template_without_other_clusters(cluster) == cluster.template_before
