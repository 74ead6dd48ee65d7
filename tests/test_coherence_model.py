"""The coherence checker's C half on the host (fast: gcc, no QEMU, no guest): what the shared
model finds for each pattern of stores, flushes and loads across nodes, its file layout (the
contract with the Python side), the decoder of flush and non-temporal instructions, and the
QEMU plugin compiling without a warning.

tests/coherence/model_test.c drives dali/coherence/c/model.c and decode.c; each scenario runs on
a fresh model file of 1 MiB with its nodes booted, and prints the findings, counters and line
states, which these tests read."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = REPO / "dali" / "coherence" / "c"
DRIVER = REPO / "tests" / "coherence" / "model_test.c"

A, B, C = 0, 1, 2
# model_test.c's PCs: A's store is a kernel address, to see the sign extension of packed PCs
A_STORE, A_FLUSH, A_NT, A_LOAD = 0xffffffff81000010, 0x401010, 0x401020, 0x401030
B_LOAD, B_LOAD2, B_FLUSH, B_STORE = 0x402000, 0x402008, 0x402010, 0x402020
L0, L1, L2 = 0x1000, 0x2040, 0x3080
MODES = ["strict", "cached"]


@pytest.fixture(scope="module")
def model_test(tmp_path_factory) -> Path:
    """model_test, built as C11 with every warning an error."""
    out = tmp_path_factory.mktemp("coherence") / "model_test"
    build = subprocess.run(["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
                            f"-I{SOURCES}", str(DRIVER), str(SOURCES / "model.c"),
                            str(SOURCES / "decode.c"), "-o", str(out)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return out


def words(line: str) -> tuple[str, dict]:
    """'finding kind=x count=2 pc=0x10' -> ('finding', {'kind': 'x', 'count': 2, 'pc': 16})."""
    head, *pairs = line.split()
    values = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            values[key] = int(value, 0)
        except ValueError:
            values[key] = value
    return head, values


@dataclass
class Model:
    """What model_test printed of a model file."""
    findings: list[dict] = field(default_factory=list)
    counters: dict[int, dict] = field(default_factory=dict)
    copies: dict[tuple[int, int], tuple[str, int, int]] = field(default_factory=dict)
    last_store: dict[int, tuple[int, int]] = field(default_factory=dict)
    last_writeback: dict[int, tuple[int, int]] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)

    def copy(self, offset: int, node: int) -> tuple[str, int, int]:
        """(copy state, stale, clwb_kept) of node's nibble of the line at offset."""
        return self.copies.get((offset // 64 * 64, node), ("none", 0, 0))

    def finding_set(self) -> set[tuple]:
        return {(f["kind"], f["writer"], f["reader"], f["writer_pc"], f["reader_pc"], f["count"])
                for f in self.findings}


def parse(text: str) -> Model:
    m = Model()
    for line in text.splitlines():
        if line.startswith("check "):
            _, name, verdict = line.split(" ", 2)
            m.checks[name] = verdict
            continue
        head, v = words(line)
        if head == "finding":
            m.findings.append(v)
        elif head == "counters":
            m.counters[v.pop("node")] = v
        elif head == "line" and "copy" in v:
            m.copies[(v["offset"], v["node"])] = (v["copy"], v["stale"], v["clwb_kept"])
        elif head == "line":
            raise AssertionError(f"a state word with bits above 31: {line}")
        elif head in ("last_store", "last_writeback"):
            getattr(m, head)[v["offset"]] = (v["node"], v["pc"])
    return m


def scenario(model_test: Path, name: str, mode: str, tmp_path: Path) -> Model:
    run = subprocess.run([str(model_test), "scenario", name, mode, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return parse(run.stdout)


# --- the scenarios -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["flushed_clflushopt", "flushed_clwb"])
def test_a_write_flushed_then_read_after_invalidating_is_no_finding(model_test, tmp_path, mode, name):
    """The correct protocol: A stores and writes back (CLFLUSHOPT or CLWB), B invalidates its
    copy and loads. Nothing to report, in either mode; A's CLWB keeps its line, clean."""
    m = scenario(model_test, name, mode, tmp_path)
    assert m.findings == []
    assert m.counters[B]["findings"] == 0
    assert m.copy(L0, B) == ("clean", 0, 0)
    assert m.copy(L0, A) == (("clean", 0, 1) if name == "flushed_clwb" else ("invalid", 0, 0))
    assert m.last_writeback[L0] == (A, A_FLUSH)
    assert (m.counters[A]["stores"], m.counters[A]["flushes"]) == (1, 1)
    assert (m.counters[B]["loads"], m.counters[B]["flushes"]) == (1, 1)


@pytest.mark.parametrize("mode", MODES)
def test_a_write_never_flushed_is_an_unflushed_read_naming_both_pcs(model_test, tmp_path, mode):
    """A stores and never writes back; B invalidates and loads: B read memory A's cache had not
    reached. The finding names A's store and B's load, and where."""
    m = scenario(model_test, "unflushed", mode, tmp_path)
    assert m.findings == [{"kind": "unflushed_read", "writer": A, "reader": B, "writer_pc": A_STORE,
                           "reader_pc": B_LOAD, "count": 1, "first_offset": L0, "last_offset": L0}]
    assert m.counters[B]["findings"] == 1 and m.counters[A]["findings"] == 0
    assert m.copy(L0, A) == ("dirty", 0, 0) and m.copy(L0, B) == ("clean", 0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_a_copy_kept_across_anothers_write_back_is_a_stale_read(model_test, tmp_path, mode):
    """B reads (a clean copy), A stores and writes back, B reads again without invalidating: B
    reads its old copy. The writer is A's flush, the last write-back."""
    m = scenario(model_test, "stale", mode, tmp_path)
    assert m.finding_set() == {("stale_read", A, B, A_FLUSH, B_LOAD, 1)}
    assert m.copy(L0, B) == ("clean", 1, 0)  # stays stale until B invalidates


@pytest.mark.parametrize("mode, found", [("strict", True), ("cached", False)])
def test_only_strict_mode_says_an_untouched_node_may_hold_a_prefetched_copy(model_test, tmp_path, mode, found):
    """B never read the line since it booted, then A stores and writes back, then B reads
    without invalidating. Strict mode: B's cache may have prefetched it, a stale read. Cached
    mode counts only copies B was seen taking: nothing."""
    m = scenario(model_test, "stale_untouched", mode, tmp_path)
    assert m.finding_set() == ({("stale_read", A, B, A_FLUSH, B_LOAD, 1)} if found else set())


@pytest.mark.parametrize("mode", MODES)
def test_two_nodes_holding_a_line_dirty_is_a_lost_write(model_test, tmp_path, mode):
    """A and B both store to one line without a flush between: whichever writes back last puts
    its whole line over the other's bytes."""
    m = scenario(model_test, "lost_write", mode, tmp_path)
    assert m.finding_set() == {("lost_write", A, B, A_STORE, B_STORE, 1)}
    assert m.copy(L0, A)[0] == m.copy(L0, B)[0] == "dirty"
    assert m.last_store[L0] == (B, B_STORE)


@pytest.mark.parametrize("mode", MODES)
def test_a_store_into_a_stale_copy_is_a_lost_write_against_the_write_back(model_test, tmp_path, mode):
    """B holds a copy, A writes a newer version back, B stores into its old copy: B's
    write-back would put old bytes over A's. The finding names A's write-back."""
    m = scenario(model_test, "stale_store", mode, tmp_path)
    assert m.finding_set() == {("lost_write", A, B, A_FLUSH, B_STORE, 1)}
    assert m.copy(L0, B) == ("dirty", 0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_clwb_instead_of_an_invalidate_keeps_the_stale_copy(model_test, tmp_path, mode):
    """A reader that 'flushes' with CLWB before reading keeps its stale line (CLWB may keep
    it cached): its own kind of finding, so the fix (CLFLUSHOPT) is obvious."""
    m = scenario(model_test, "clwb_kept", mode, tmp_path)
    assert m.finding_set() == {("clwb_kept_stale", A, B, A_FLUSH, B_LOAD, 1)}
    assert m.copy(L0, B) == ("clean", 1, 1)


@pytest.mark.parametrize("mode", MODES)
def test_a_non_temporal_store_needs_no_flush_but_stales_older_copies(model_test, tmp_path, mode):
    """MOVNT* goes to memory: B invalidating and reading finds nothing wrong; B reading a copy
    it took before the non-temporal store is a stale read naming that store."""
    fresh = scenario(model_test, "nt_store", mode, tmp_path)
    assert fresh.findings == []
    assert fresh.copy(L0, A) == ("invalid", 0, 0)
    assert fresh.last_store[L0] == fresh.last_writeback[L0] == (A, A_NT)
    assert fresh.counters[A]["nt_stores"] == 1 and fresh.counters[A]["stores"] == 0
    old = scenario(model_test, "nt_store_stale", mode, tmp_path)
    assert old.finding_set() == {("stale_read", A, B, A_NT, B_LOAD, 1)}


def test_the_same_finding_twice_is_one_slot_counted_twice(model_test, tmp_path):
    """Two stale reads at one PC are one finding counted twice; a read at another PC is another
    finding. The reader's counter counts every occurrence."""
    m = scenario(model_test, "same_twice", "cached", tmp_path)
    assert m.finding_set() == {("stale_read", A, B, A_FLUSH, B_LOAD, 2),
                               ("stale_read", A, B, A_FLUSH, B_LOAD2, 1)}
    assert m.counters[B]["findings"] == 3


def test_an_access_across_a_line_boundary_touches_both_lines(model_test, tmp_path):
    """An 8-byte store at the last 4 bytes of a line dirties it and the next; the read across
    the boundary finds both, one finding counted twice, from its first to its last line."""
    m = scenario(model_test, "crossing", "strict", tmp_path)
    assert m.findings == [{"kind": "unflushed_read", "writer": A, "reader": B, "writer_pc": A_STORE,
                           "reader_pc": B_LOAD, "count": 2, "first_offset": L0 + 60,
                           "last_offset": L0 + 64}]
    assert m.copy(L0, A)[0] == m.copy(L0 + 64, A)[0] == "dirty"
    assert m.counters[A]["stores"] == 1  # one access, two lines


@pytest.mark.parametrize("mode", MODES)
def test_a_boot_forgets_the_nodes_copies_and_findings_only(model_test, tmp_path, mode):
    """B boots again: its copies and the findings B's reads made are gone (the model shows the
    findings since the nodes booted); A's copies and A's findings stay. Counters keep counting."""
    m = scenario(model_test, "boot", mode, tmp_path)
    assert m.finding_set() == {("unflushed_read", B, A, B_STORE, A_LOAD, 1)}
    assert [key for key in m.copies if key[1] == B] == []
    assert m.copy(L0, A)[0] == "dirty" and m.copy(L1, A)[0] == "clean"
    assert m.counters[B]["boots"] == 2 and m.counters[A]["boots"] == 1
    assert m.counters[B]["findings"] == 1  # the counter is not reset


def test_one_write_back_stales_every_other_copy(model_test, tmp_path):
    """Three nodes: B and C hold the line, A stores and CLWBs it; both read stale copies."""
    m = scenario(model_test, "three_nodes", "cached", tmp_path)
    assert m.finding_set() == {("stale_read", A, B, A_FLUSH, B_LOAD, 1),
                               ("stale_read", A, C, A_FLUSH, B_LOAD, 1)}
    assert m.copy(L0, A) == ("clean", 0, 1)


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_nodes_never_corrupt_a_line_or_lose_a_finding(model_test, tmp_path, mode):
    """Eight threads as vCPUs of four nodes hammer the same 16 lines with loads, stores,
    non-temporal stores and flushes (as several QEMUs' vCPUs do), then each node stores and
    invalidates every line at once with the others. Every node's own copy is always what its
    last access made it (no compare-and-swap lost), the access counters add up, and every
    finding occurrence is in exactly one slot and in its reader's counter."""
    m = scenario(model_test, "concurrency", mode, tmp_path)
    assert m.checks == {name: "ok" for name in (
        "own_nibble_after_each_access", "final_states", "access_counters",
        "findings_match_counters", "findings_found", "findings_one_slot_a_key",
        "findings_in_their_share")}
    assert sum(f["count"] for f in m.findings) == sum(c["findings"] for c in m.counters.values())


# --- the file layout: the contract with the Python side ------------------------------------

CONTRACT = {
    "magic": "DALICOH1", "version": 1, "nodes_max": 8, "line_size": 64,
    "header.size": 4096, "header.magic": 0, "header.version": 8, "header.nodes_max": 12,
    "header.fam_size": 16, "header.line_size": 24, "header.lines": 32, "header.lines_offset": 40,
    "header.findings_offset": 48, "header.findings_slots": 56, "header.mode": 64,
    "header.reserved": 68, "header.node": 256,
    "node.size": 64, "node.boots": 0, "node.loads": 8, "node.stores": 16, "node.nt_stores": 24,
    "node.flushes": 32, "node.fences": 40, "node.findings": 48, "node.flush_unresolved": 56,
    "header.pages": 768, "pages.size": 64, "pages.rechecked": 0, "pages.stale": 8,
    "line.size": 24, "line.state": 0, "line.last_store": 8, "line.last_writeback": 16,
    "finding.size": 64, "finding.key": 0, "finding.kind": 8, "finding.writer_node": 12,
    "finding.reader_node": 13, "finding.writer_pc": 16, "finding.reader_pc": 24,
    "finding.count": 32, "finding.first_offset": 40, "finding.last_offset": 48,
    "mode.strict": 1, "mode.cached": 2,
    "copy.none": 0, "copy.invalid": 1, "copy.clean": 2, "copy.dirty": 3,
    "flag.stale": 4, "flag.clwb_kept": 8,
    "kind.unflushed_read": 1, "kind.stale_read": 2, "kind.lost_write": 3, "kind.clwb_kept_stale": 4,
}


def test_the_layout_is_the_contract(model_test):
    """`model_test layout` prints the offsets the C side compiled in (from its structs): they are
    the ones the Python side reads, field by field."""
    run = subprocess.run([str(model_test), "layout"], capture_output=True, text=True, check=True)
    printed = {}
    for line in run.stdout.splitlines():
        name, value = line.split()
        printed[name] = value if name == "magic" else int(value)
    assert printed == CONTRACT


def contract_header(fam_size: int, slots: int, mode: int) -> tuple[bytes, int]:
    """A model's header as the contract spells it, and the file's size."""
    lines = fam_size // 64
    findings_offset = -(-(4096 + lines * 24) // 4096) * 4096
    header = b"DALICOH1" + struct.pack("<IIQQQQQQII", 1, 8, fam_size, 64, lines, 4096,
                                       findings_offset, slots, mode, 0)
    return header.ljust(4096, b"\0"), findings_offset + slots * 64


def test_a_model_file_made_by_the_contract_opens_and_a_foreign_one_is_refused(model_test, tmp_path):
    """A sparse file with only the contract's header written (as dali makes it) opens, fresh;
    the same with the magic wrong, or cut short of its findings table, is refused in one line."""
    header, size = contract_header(2 << 20, 4096, 1)
    good = tmp_path / "good.model"
    with open(good, "wb") as f:
        f.write(header)
        f.truncate(size)
    dump = subprocess.run([str(model_test), "dump", str(good)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert parse(dump.stdout).counters[7] == dict.fromkeys(
        ("boots", "loads", "stores", "nt_stores", "flushes", "fences", "findings", "flush_unresolved"), 0)
    for name, data, length, reason in [
            ("magic", b"DALICOX1" + header[8:], size, "is not a coherence model (no DALICOH1 magic)"),
            ("short", header, size - 64, "is shorter than its findings table")]:
        bad = tmp_path / f"{name}.model"
        with open(bad, "wb") as f:
            f.write(data)
            f.truncate(length)
        refused = subprocess.run([str(model_test), "dump", str(bad)], capture_output=True, text=True)
        assert (refused.returncode, refused.stdout) == (2, "")
        assert refused.stderr == f"model_test: the model {bad} {reason}\n"


def test_the_c_side_makes_the_same_file_as_the_contract(model_test, tmp_path):
    """`model_test create` (the C side's own files, for tests) writes the contract's header
    byte for byte, and a file of the contract's size."""
    path = tmp_path / "c.model"
    subprocess.run([str(model_test), "create", str(path), str(1 << 30), "cached", "65536"], check=True)
    header, size = contract_header(1 << 30, 65536, 2)
    assert path.stat().st_size == size
    with open(path, "rb") as f:
        assert f.read(4096) == header


# --- the decoder -------------------------------------------------------------------------------

def decoded(model_test: Path, hexbytes: str) -> dict:
    run = subprocess.run([str(model_test), "decode", hexbytes], capture_output=True, text=True, check=True)
    return words("decode " + run.stdout.strip())[1]


def operand(kind, length, base=-1, index=-1, scale=1, disp=0, rip_relative=0, addr32=0, seg="none"):
    return {"kind": kind, "base": base, "index": index, "scale": scale, "disp": disp,
            "rip_relative": rip_relative, "addr32": addr32, "seg": seg, "length": length}


RAX, RCX, RSI, RDI, R9, R12, R13 = 0, 1, 6, 7, 9, 12, 13

DECODE_CASES = {
    "0FAE38": operand("clflush", 3, base=RAX),                                  # clflush (%rax)
    "0F22DF": operand("mov_cr3", 3, base=RDI),                                  # mov %rdi,%cr3: a new space
    "410F22D9": operand("mov_cr3", 4, base=R9),                                 # mov %r9,%cr3: REX.B
    "0F22D7": operand("none", 0),                                               # mov %rdi,%cr2
    "440F22D9": operand("none", 0),                                             # mov %rcx,%cr11: REX.R
    "0F22E7": operand("tlb_flush", 3),                                          # mov %rdi,%cr4: PGE, PCIDE
    "0F22C0": operand("tlb_flush", 3),                                          # mov %rax,%cr0: paging
    "440F22C0": operand("none", 0),                                             # mov %rax,%cr8: the TPR
    "0F0138": operand("tlb_flush", 3),                                          # invlpg (%rax)
    "0F017F40": operand("tlb_flush", 4),                                        # invlpg 0x40(%rdi)
    "660F388238": operand("tlb_flush", 5),                                      # invpcid (%rax),%rdi
    "0F01F8": operand("none", 0),                                               # swapgs: 0F 01 /7, mod 11
    "0F01F9": operand("none", 0),                                               # rdtscp
    "0F0138"[:4]: operand("none", 0),                                           # cut short
    "660FAE7F40": operand("clflushopt", 5, base=RDI, disp=0x40),                # clflushopt 0x40(%rdi)
    "660FAE36": operand("clwb", 4, base=RSI),                                   # clwb (%rsi)
    "66410FAE31": operand("clwb", 5, base=R9),                                  # clwb (%r9): REX.B
    "0FAE3D10000000": operand("clflush", 7, disp=16, rip_relative=1),           # clflush 0x10(%rip)
    "0FAE3DF0FFFFFF": operand("clflush", 7, disp=-16, rip_relative=1),
    "0FAE7C8D08": operand("clflush", 5, base=5, index=RCX, scale=4, disp=8),    # 8(%rbp,%rcx,4)
    "0FAE3CB5F0FFFFFF": operand("clflush", 8, index=RSI, scale=4, disp=-16),    # -16(,%rsi,4)
    "0FAE3C25F0000000": operand("clflush", 8, disp=0xF0),                       # 0xf0 absolute
    "420FAE3C20": operand("clflush", 5, base=RAX, index=R12),                   # (%rax,%r12): REX.X
    "410FAE3C24": operand("clflush", 5, base=R12),                              # (%r12): SIB, no index
    "410FAE7D00": operand("clflush", 5, base=R13),                              # 0(%r13): disp8
    "640FAE38": operand("clflush", 4, base=RAX, seg="fs"),                      # %fs:(%rax)
    "650FAE3F": operand("clflush", 4, base=RDI, seg="gs"),
    "670FAE38": operand("clflush", 4, base=RAX, addr32=1),                      # (%eax)
    "2E660FAE38": operand("clflushopt", 5, base=RAX),                           # cs: ignored
    "0FAEF8": operand("sfence", 3),
    "0FAEF0": operand("mfence", 3),
    "0FAEE8": operand("lfence", 3),
    "480FC307": operand("nt_store", 4),                                         # movnti %rax,(%rdi)
    "660FE707": operand("nt_store", 4),                                         # movntdq
    "0FE707": operand("nt_store", 3),                                           # movntq
    "0F2B07": operand("nt_store", 3),                                           # movntps
    "660F2B07": operand("nt_store", 4),                                         # movntpd
    "C5F9E707": operand("nt_store", 4),                                         # vmovntdq (VEX)
    "C4E17DE707": operand("nt_store", 5),                                       # vmovntdq ymm (VEX3)
    "62F17D48E707": operand("nt_store", 6),                                     # vmovntdq zmm (EVEX)
    "660F38F807": operand("nt_store", 5),                                       # movdir64b
    "488907": operand("none", 0),                                               # mov %rax,(%rdi)
    "0FAE30": operand("none", 0),                                               # xsaveopt: /6, no 66
    "0FAE00": operand("none", 0),                                               # fxsave
    "0FAE28": operand("none", 0),                                               # xrstor
    "0FAE20": operand("none", 0),                                               # xsave
    "660FAEF0": operand("none", 0),                                             # tpause %eax
    "F30FAE38": operand("none", 0),                                             # F3 /7: not a flush
    "0F1838": operand("none", 0),                                               # prefetch
    "660FAE": operand("none", 0),                                               # cut short
}


@pytest.mark.parametrize("hexbytes", DECODE_CASES)
def test_the_decoder_reads_flushes_fences_and_non_temporal_stores(model_test, hexbytes):
    """An instruction's bytes -> its kind, and for a flush the operand the plugin computes the
    address from (registers by ModRM number: 0 rax .. 7 rdi, 8-15 r8-r15; -1 none). The
    instructions that invalidate translations (tlb_flush) make the plugin forget its pages."""
    assert decoded(model_test, hexbytes) == DECODE_CASES[hexbytes]


# --- the plugin --------------------------------------------------------------------------------

def test_the_plugin_builds_without_a_warning(tmp_path):
    """The QEMU plugin builds with dali's exact command against the qemu-plugin.h of the QEMU
    checked nodes run (not in the tree: checker:qemu takes it from Debian's source package,
    into the checkout's state/cache/, fetched here if no cluster did yet) with -Werror, and
    exports what QEMU looks up."""
    from dali.coherence import qemu
    cache = REPO / "state" / "cache"
    qemu.ensure(cache)
    header = qemu.header_dir(cache) / "qemu-plugin.h"
    include = tmp_path / "include"
    include.mkdir()
    shutil.copy(header, include / "qemu-plugin.h")
    glib = subprocess.run(["pkg-config", "--cflags", "glib-2.0"], capture_output=True, text=True, check=True)
    so = tmp_path / "libdalicoherence.so"
    build = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", *glib.stdout.split(),
                            f"-I{include}", "plugin.c", "model.c", "decode.c", "-o", str(so)],
                           cwd=SOURCES, capture_output=True, text=True)
    assert build.returncode == 0 and build.stderr == "", build.stderr
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "qemu_plugin_install" in symbols and "qemu_plugin_version" in symbols
