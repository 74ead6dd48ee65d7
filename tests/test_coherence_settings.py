"""device.coherence without a guest: what it refuses, what a checked node's XML holds, and the
model file as dali makes and reads it (the plugin's side is test_coherence_model.py; real
guests are test_coherence.py)."""

from __future__ import annotations

import os
import struct
import subprocess
import xml.etree.ElementTree as ET

import pytest

from dali import domain, settings
from dali.coherence import findings, model
from dali.errors import DaliError
from support.doit import one_error_line, run_doit
from support.files import local_files

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def load(tmp_path, text: str):
    (tmp_path / "c.toml").write_text(text)
    return settings.load(tmp_path / "c.toml", env={})


@pytest.mark.parametrize("text, said", [
    ('accel = "kvm"\n[device]\ncoherence = "strict"\n', 'set accel = "tcg" or "auto"'),
    ('uri = "qemu+ssh://root@lab/system"\n[device]\ncoherence = "cached"\nstyle = "native"\n',
     "run the cluster on this machine's libvirt"),
    ('clones = ["b","c","d","e","f","g","h","i"]\n[device]\ncoherence = "strict"\n', "at most 8 nodes"),
    ('[device]\ncoherence = "yes"\n', "device.coherence"),
])
def test_what_checking_cannot_do_is_one_line_and_nothing_made(tmp_path, text, said):
    """As a user meets it: `doit` exits non-zero with one line naming the setting and the fix,
    and nothing of the cluster exists (not even its state directory)."""
    config = tmp_path / "cluster.toml"
    tag = "cohrefused" + os.urandom(3).hex()
    config.write_text(f'tag = "{tag}"\n' + text)
    run = run_doit(f"config={config}", env={"DALI_DIR": str(tmp_path / "data")})
    line = one_error_line(run)
    assert run.returncode != 0 and "device.coherence" in line and said in line, line
    assert not (tmp_path / "data").exists()


def test_a_comma_in_the_plugin_s_path_is_refused(tmp_path):
    """The plugin lives under the checkout; -plugin's arguments are comma-separated."""
    (tmp_path / "c.toml").write_text('[device]\ncoherence = "strict"\n')
    with pytest.raises(settings.ConfigError, match="has no comma"):
        settings.load(tmp_path / "c.toml", env={}, repo=tmp_path / "dali,copy")


def test_a_checked_node_runs_the_checked_qemu_with_the_plugin_at_a_pinned_address(tmp_path):
    c = load(tmp_path, 'clones = ["b"]\n[device]\ncoherence = "strict"\nstyle = "native"\n')
    root = ET.fromstring(domain.domain_xml(c, local_files(c), c.clone_nodes[0], "qemu"))
    assert root.find("devices/emulator").text == str(c.cache_dir / "qemu-coherence" / "qemu-system-x86_64")
    assert root.find("cpu").get("mode") == "maximum"  # CLWB and CLFLUSHOPT there, as on the hardware
    address = root.find("devices/memory/address")
    assert (address.get("type"), address.get("base")) == ("dimm", "0x100000000")
    args = [a.get("value") for a in root.find(f"{QEMU_NS}commandline")]
    plugin = args[args.index("-plugin") + 1]
    assert plugin == (f"{c.cache_dir}/qemu-coherence/libdalicoherence.so,model={c.data_dir}/FAM.coherence,"
                      "node=1,base=0x100000000")  # b is node 1: the original is 0


def test_seed_style_pins_the_nvdimm_on_its_device(tmp_path):
    c = load(tmp_path, '[device]\ncoherence = "cached"\n')
    root = ET.fromstring(domain.domain_xml(c, local_files(c), c.original_node, "qemu"))
    args = [a.get("value") for a in root.find(f"{QEMU_NS}commandline")]
    assert "nvdimm,memdev=FAM,addr=0x100000000" in args and "-plugin" in args


def test_an_unchecked_node_is_as_before(tmp_path):
    c = load(tmp_path, "")
    text = domain.domain_xml(c, local_files(c), c.original_node, "qemu")
    assert "emulator" not in text and "plugin" not in text and "maximum" not in text


@pytest.mark.parametrize("memory, base", [
    (1 << 30, 4 << 30),  # all of the RAM below 4 GiB
    (3 << 30, 4 << 30),
    (0xE0000000, 5 << 30),  # 3.5 GiB: 3 GiB below, 0.5 above, rounded up to a GiB
    (6 << 30, 7 << 30),  # 3 GiB above 4 GiB
])
def test_where_the_pc_machine_puts_its_device_memory(memory, base):
    assert domain.nvdimm_base(memory) == base


def test_a_model_is_made_sparse_and_read_back(tmp_path):
    """The header dali writes, a finding written into a slot as the plugin writes it, and
    what dali reads of it; --reset zeroes the findings and nothing else."""
    path = tmp_path / "FAM.coherence"
    fam_size = 64 << 20
    with open(path, "wb") as f:
        f.write(model.header(fam_size, "strict"))
        f.truncate(model.file_size(fam_size))
    assert model.fits(path, fam_size, "strict") and not model.fits(path, fam_size, "cached")
    assert model.resident_bytes(path) < 64 << 10, "a hole but for the header"
    head = model.read_header(path)
    writer_pc, reader_pc = 0xFFFFFFFF81234567, 0x401136
    slot = struct.pack("<QIBBHQQQQQQ", 0x1234, 1, 0, 1, 0, writer_pc, reader_pc, 3, 0x2000, 0x2000, 0)
    line_word = struct.pack("<Q", 0x3)  # node 0 holds line 0 dirty
    with open(path, "r+b") as f:
        f.seek(head.findings_offset + 5 * model.SLOT)
        f.write(slot)
        f.seek(model.HEADER)
        f.write(line_word)
    (found,) = model.findings(path)
    assert found == model.Finding("unflushed read", 0, 1, writer_pc, reader_pc, 3, 0x2000, 0x2000)
    model.reset_findings(path)
    assert model.findings(path) == []
    assert open(path, "rb").read(model.HEADER + 8)[-8:] == line_word, "the lines' states are kept"


def test_a_stale_page_the_plugin_counted_is_a_warning_in_doit_coherence(tmp_path):
    """The plugin's own check (pages rechecked, pages found stale: c/plugin.c) read from where it
    writes them, 768 + 64 per node; a stale one makes `doit coherence` say so, none says nothing."""
    c = load(tmp_path, 'clones = ["b"]\n[device]\ncoherence = "strict"\n')
    path = tmp_path / "FAM.coherence"
    with open(path, "wb") as f:
        f.write(model.header(64 << 20, "strict"))
        f.truncate(model.file_size(64 << 20))
        f.seek(768 + 64)  # node 1's: 5000 rechecked, 2 stale
        f.write(struct.pack("<2Q", 5000, 2))
    counted = model.counters(path)
    assert [(n["pages_rechecked"], n["pages_stale"]) for n in counted[:3]] == [(0, 0), (5000, 2), (0, 0)]
    assert "WARNING: 2 of the plugin's remembered pages were wrong when asked again (of 5000)" \
        in findings.text([], counted, c, "strict")
    counted[1]["pages_stale"] = 0
    assert "WARNING" not in findings.text([], counted, c, "strict")


def test_pcs_are_named_from_kallsyms_and_the_program(tmp_path):
    """A kernel address by the node's own kallsyms (module included); a program's through
    addr2line on the binary built -no-pie."""
    source = tmp_path / "p.c"
    source.write_text("__attribute__((noinline)) int writer_store(int *p) { return *p = 1; }\n"
                      "int main(void) { int x; return writer_store(&x) - 1; }\n")
    binary = tmp_path / "p"
    subprocess.run(["gcc", "-O2", "-g", "-static", "-no-pie", "-o", str(binary), str(source)], check=True)
    nm = subprocess.run(["nm", str(binary)], capture_output=True, text=True).stdout
    address = int(next(line.split()[0] for line in nm.splitlines() if line.endswith(" writer_store")), 16)
    symbols = findings.Symbols([binary])
    symbols.add_kernel("ivpa", "ffffffffc0a01000 t ocfs2_read_blocks\t[ocfs2]\n"
                               "ffffffff81000000 T _stext\nffffffff81234000 T pmem_do_read\n")
    assert symbols.name("ivpa", 0xFFFFFFFFC0A01010) == "ocfs2_read_blocks+0x10 [ocfs2]"
    assert symbols.name("ivpa", 0xFFFFFFFF81234008) == "pmem_do_read+0x8"
    assert symbols.name("ivpb", 0xFFFFFFFF81234008) == "", "another node: its own KASLR offset"
    assert symbols.name("ivpa", address + 2).startswith("writer_store (p)")


def test_doit_coherence_on_an_unchecked_cluster_says_how_to_turn_it_on(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text(f'tag = "cohoff{os.urandom(3).hex()}"\nuri = "test:///default"\n')
    line = one_error_line(run_doit("coherence", f"config={config}", env={"DALI_DIR": str(tmp_path / "d")}))
    assert "device.coherence is off" in line and 'device.coherence = "strict"' in line, line


def test_the_model_refuses_a_remote_place(tmp_path):
    from dali.storage.pool import LibvirtPool
    pool = object.__new__(LibvirtPool)
    pool.where = " on qemu+ssh://lab/system"
    with pytest.raises(DaliError, match="only on this machine"):
        pool.map_shared(tmp_path / "x", 1, b"")
