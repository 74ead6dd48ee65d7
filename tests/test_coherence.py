"""The coherence checker on real guests: the two nodes of a checked cluster (device.coherence =
"strict"), first as an OCFS2 cluster on fsdax (what the kernel's own pmem and OCFS2 code does on
non-coherent memory; a torture run fails in strict mode on what the checker found), then on
devdax, where a small program of ours (tests/coherence/famlines.c) writes a value on one node
and reads it on the other, with and without the flushes non-coherent memory needs. The correct
pair is silent, and each mistake is reported by kind, naming the functions on both sides, at its
FAM offset. (The same cases with checking off, where the reader always sees the right bytes, are
test_device_modes.py's, next on the same cluster: conftest.dax_cluster.)

The FAM is 256 MiB: every node's kernel initialises the device's struct pages at boot, each
store of it checked (docs/coherence.md), and mkfs.ocfs2 writes the device through: a smaller
device boots and formats faster, and shows the same."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from dali.coherence import model
from dali.coherence.findings import KERNEL_START
from support import famlines
from support.cluster import torture_runs, torture_table
from support.doit import one_error_line
from support.famlines import CLWB_READ, CORRECT, NO_FLUSH, NO_INVALIDATE, NT_STORE, TWO_WRITERS, on

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

DEVDAX_PAGE = 2 << 20  # offsets in /dev/dax0.0 are offsets in the FAM past the namespace's start


@pytest.fixture(scope="module")
def famlines_binary(tmp_path_factory) -> Path:
    return famlines.build(tmp_path_factory.mktemp("famlines"))


@pytest.fixture(scope="module")
def ocfs2_checked(dax_cluster):
    """conftest.dax_cluster checked, as an OCFS2 cluster on fsdax: the checked QEMU, the plugin
    and the model are made, the original makes the namespace, both nodes boot checked and mount."""
    c = dax_cluster
    c.set(device={"style": "native", "mode": "fsdax", "coherence": "strict"},
          fs={"type": "ocfs2", "mountpoint": "/data", "slots": 2, "heartbeat_threshold": 11})
    c.doit()
    c.doit("start")
    return c


def test_checked_nodes_load_the_plugin_where_the_nvdimm_is(ocfs2_checked):
    c = ocfs2_checked
    head = model.read_header(c.cfg.coherence_model)
    assert (head.fam_size, head.mode) == (c.cfg.fam_size, "strict")
    for i, s in enumerate("ab"):
        log = Path(f"/var/log/libvirt/qemu/{c.tag}{s}.log").read_text()
        assert f"dali-coherence: node {i} checking 0x100000000" in log
        iomem = c.virt.run(c.dom(s), ["cat", "/proc/iomem"]).stdout
        assert re.search(r"^\s*100000000-[0-9a-f]+ : Persistent Memory", iomem, re.M), iomem
    assert all(node["boots"] >= 1 for node in model.counters(c.cfg.coherence_model)[:2])


def test_ocfs2_reads_another_nodes_writes_without_invalidating(ocfs2_checked):
    """A file written on a and read on b: b gets the right bytes (the emulation is coherent),
    and the checker says what b's kernel did: it read lines a wrote back without invalidating
    its own copy first. The pmem driver's read path copies out of the device as from RAM;
    docs/coherence.md says what that means for MDCfs."""
    c = ocfs2_checked
    c.doit("coherence", "--reset")
    c.virt.run(c.dom("a"), ["sh", "-c", "echo written-on-a > /data/coherence.txt && sync"]).check("write on a")
    read = c.virt.run(c.dom("b"), ["cat", "/data/coherence.txt"]).check("read on b")
    assert read.stdout.strip() == "written-on-a"
    run = c.doit("coherence")
    stale = [line for line in run.stdout.splitlines()
             if line.startswith("stale read") and f"{c.tag}a " in line and f"{c.tag}b " in line]
    assert stale, run.stdout
    # Both sides are the kernel's, named from each node's kallsyms.
    assert all(re.search(r"\w+\+0x[0-9a-f]+ \(0xffffffff[0-9a-f]+\)", line) for line in stale), stale
    report = (c.cfg.state_dir / "coherence" / "coherence.md").read_text()
    assert "stale read" in report


def test_torture_on_a_checked_cluster_reports_its_findings_and_fails_in_strict_mode(ocfs2_checked):
    """namespace passes on a healthy OCFS2 cluster (test_torture.py); checked in strict mode,
    the run fails on what the checker found meanwhile, kept beside its report."""
    c = ocfs2_checked
    run = c.doit("torture", "--seconds", "5", "namespace", check=False)
    rows = torture_table(run)
    assert rows["namespace"][2] == "0", run.stdout  # no violation: the workload itself passed
    assert run.returncode != 0 and "strict mode" in one_error_line(run), run.stdout + run.stderr
    (kept,) = torture_runs(c)[-1:]
    assert "stale read" in (kept / "coherence.md").read_text()
    assert "<failure" in (kept / "coherence.xml").read_text()


@pytest.fixture(scope="module")
def checked(ocfs2_checked, famlines_binary):
    """The same nodes on devdax, still checked, famlines on both. A FAM holding a namespace keeps
    it (the refusal is test_device_modes.py's): the fsdax one is moved away, as dali's line says,
    and the original makes devdax on a new FAM. The model is the cluster's, kept: what OCFS2 left
    in it is zeroed, so that counting starts from here."""
    c = ocfs2_checked
    c.doit("destroy")
    os.rename(c.cfg.fam_path, c.cfg.fam_path.with_name("FAM.fsdax"))
    c.set(device={"style": "native", "mode": "devdax", "coherence": "strict"}, fs={"type": "none"})
    c.doit()
    c.doit("start")
    c.doit("coherence", "--reset")
    famlines.install(c, famlines_binary)
    return c


def famlines_findings(c) -> list[model.Finding]:
    """The findings in famlines' code, both sides in user space. (The kernels' own are there
    too: each node's kernel keeps the device's struct pages on the device itself, ndctl's
    default --map=dev, and writes them at boot: lost writes, docs/coherence.md.)"""
    return [f for f in model.findings(c.cfg.coherence_model)
            if f.writer_pc < KERNEL_START and f.reader_pc < KERNEL_START]


def findings_at(c, offset: int) -> list[model.Finding]:
    return [f for f in famlines_findings(c) if f.first_offset % DEVDAX_PAGE == offset]


def test_each_mistake_is_found_and_the_correct_pair_is_not(checked, famlines_binary):
    famlines.play_every_case(checked)
    assert findings_at(checked, CORRECT) == [], "flushed, fenced and invalidated: nothing to say"
    assert findings_at(checked, NT_STORE) == [], "a non-temporal store reaches the FAM by itself"
    expected = {NO_FLUSH: "unflushed read", NO_INVALIDATE: "stale read",
                TWO_WRITERS: "lost write", CLWB_READ: "CLWB kept a stale line"}
    for offset, kind in expected.items():
        assert [f.kind for f in findings_at(checked, offset)] == [kind], (hex(offset), findings_at(checked, offset))
    run = checked.doit("coherence", "--binary", str(famlines_binary))
    rows = {}  # what the user reads: famlines' rows of the table, by kind
    for line in run.stdout.splitlines():
        if "(famlines)" in line:
            rows.setdefault(line.split("  ")[0], []).append(line)
    assert sorted(rows) == ["CLWB kept a stale line", "lost write", "stale read", "unflushed read"], run.stdout
    (unflushed,), (stale,), (lost,), (clwb,) = (rows[k] for k in ("unflushed read", "stale read", "lost write",
                                                                  "CLWB kept a stale line"))
    a, b = checked.tag + "a", checked.tag + "b"
    assert re.search(rf"{a} writer_store .*{b} reader_load", unflushed), unflushed
    assert re.search(rf"{a} [^(]*writer_flush .*{b} reader_load", stale), stale  # the write-back it missed
    assert re.search(rf"{a} writer_store .*{b} writer_store", lost), lost
    assert re.search(rf"{a} [^(]*writer_flush .*{b} [^(]*reader_load", clwb), clwb
    report = (checked.cfg.state_dir / "coherence" / "coherence.md").read_text()
    assert "unflushed read" in report and "writer_store" in report
    junit = (checked.cfg.state_dir / "coherence" / "coherence.xml").read_text()
    assert "<failure" in junit


def test_a_node_booted_again_starts_with_nothing_cached_and_nothing_found(checked):
    """Killed and started again: the model forgets what that node held and found (the model
    file is the one dali made; a clean removes it with the FAM, test_device_modes.py's last test)."""
    model_file = checked.cfg.coherence_model
    inode = model_file.stat().st_ino
    assert {f.reader_node for f in famlines_findings(checked)} == {1}
    boots = model.counters(model_file)[1]["boots"]
    checked.doit("destroy", "b")
    checked.doit("start", "b")
    assert model.counters(model_file)[1]["boots"] == boots + 1
    assert famlines_findings(checked) == [], "b's findings went with its boot"
    # Before its boot b held this line stale (a wrote it back after b's read): read without
    # invalidating, that was a stale read. After it, b's cache is empty.
    on(checked, "b", "read", NO_INVALIDATE, "cached")
    assert findings_at(checked, NO_INVALIDATE) == [], "nothing cached on b after its boot"
    assert model_file.stat().st_ino == inode, "the same model: the other node's view is kept"


def test_no_node_checked_an_access_by_a_stale_page(checked):
    """Each node's plugin remembers which pages are the FAM's, as a TLB would, and forgets them
    when the guest invalidates translations; one hit in 4096 it asks QEMU again
    (dali/coherence/c/plugin.c). Both nodes booted, ran OCFS2 on fsdax, booted on devdax and
    ran famlines, b booted once more: every answer asked again was the one remembered."""
    counted = model.counters(checked.cfg.coherence_model)[:2]
    assert all(node["pages_rechecked"] > 1000 for node in counted), counted
    assert [node["pages_stale"] for node in counted] == [0, 0], counted


def test_reset_starts_counting_again(checked):
    on(checked, "a", "write", NO_FLUSH + 0x1000, 0x99, "noflush")
    on(checked, "b", "read", NO_FLUSH + 0x1000, "invalidate")
    assert [f.kind for f in findings_at(checked, NO_FLUSH + 0x1000)] == ["unflushed read"]
    checked.doit("coherence", "--reset")
    assert model.findings(checked.cfg.coherence_model) == []


def test_clean_would_take_the_model(checked):
    """Named by `doit clean -n` with the FAM (a dry run: the clean itself, which takes it, ends
    test_device_modes.py)."""
    listed = checked.doit("clean", "-n").stdout
    assert str(checked.cfg.coherence_model) in listed and str(checked.cfg.fam_path) in listed, listed
