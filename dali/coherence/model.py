"""The model file every checked node's QEMU maps: its layout, made, read and reset from here.

The plugin (dali/coherence/c/model.h holds the same layout, the contract between the two) keeps
one state word per 64-byte line of the FAM and a table of findings in this one file, which
every node's QEMU maps shared: what one node stores, the others' plugins see at once. dali
writes the header and leaves the rest a hole; it reads the findings and the per-node counters
while the nodes run (a finding's count is written last, so a slot with a count is whole).

Layout (little-endian):
  header, 4096 bytes: magic, version, nodes_max, fam_size, line_size, lines, lines_offset,
    findings_offset, findings_slots, mode; from byte 256, 64 bytes of counters per node;
    from byte 768, 64 bytes per node of the plugin's checks of its own page memory
  lines: 24 bytes each (state word, last store, last write-back)
  findings: 64-byte slots (key, kind, writer node, reader node, writer pc, reader pc, count,
    first offset, last offset)
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import NamedTuple

MAGIC = b"DALICOH1"
VERSION = 1
NODES_MAX = 8  # 4 bits of a line's 32-bit state word per node
LINE = 64  # bytes in a cache line of x86
LINE_ENTRY = 24  # bytes the model keeps per line
HEADER = 4096
FINDINGS_SLOTS = 65536  # distinct (kind, writer pc, reader pc, nodes): far more than a run finds
SLOT = 64
MODES = {"strict": 1, "cached": 2}

_HEADER = struct.Struct("<8sIIQQQQQQII")
COUNTERS = ("boots", "loads", "stores", "nt_stores", "flushes", "fences", "findings", "flush_unresolved")
_COUNTERS = struct.Struct("<8Q")
COUNTERS_OFFSET = 256
# The plugin's memory of which pages are the FAM's, checked against QEMU now and then: a stale
# answer would be an access checked in the wrong place or not at all (c/plugin.c).
PAGE_COUNTERS = ("pages_rechecked", "pages_stale")
_PAGE_COUNTERS = struct.Struct("<2Q")
PAGE_COUNTERS_OFFSET = 768
_SLOT = struct.Struct("<QIBBHQQQQQQ")

KINDS = {1: "unflushed read", 2: "stale read", 3: "lost write", 4: "CLWB kept a stale line"}
# What each kind means, for reports: one sentence a developer can act on.
MEANING = {
    "unflushed read": "the reader fetched the line from the FAM while the writer still held its "
                      "store in its cache: the writer never wrote it back (CLWB/CLFLUSHOPT + SFENCE)",
    "stale read": "the reader used its own cached copy after the writer wrote a newer version "
                  "back: the reader never invalidated (CLFLUSH/CLFLUSHOPT) before reading",
    "lost write": "two nodes held the line modified at once, or one modified a stale copy: one "
                  "write-back overwrites the other's bytes",
    "CLWB kept a stale line": "the reader's CLWB keeps the line cached: where the reader needs "
                              "the other node's bytes it must invalidate (CLFLUSHOPT), not CLWB",
}


def findings_offset(fam_size: int) -> int:
    lines = fam_size // LINE
    return -(-(HEADER + lines * LINE_ENTRY) // 4096) * 4096


def file_size(fam_size: int) -> int:
    return findings_offset(fam_size) + FINDINGS_SLOTS * SLOT


def header(fam_size: int, mode: str) -> bytes:
    """The first 4096 bytes of a new model: everything after them starts as zeros (a hole)."""
    head = _HEADER.pack(MAGIC, VERSION, NODES_MAX, fam_size, LINE, fam_size // LINE, HEADER,
                        findings_offset(fam_size), FINDINGS_SLOTS, MODES[mode], 0)
    return head.ljust(HEADER, b"\0")


class Header(NamedTuple):
    fam_size: int
    mode: str
    findings_offset: int
    findings_slots: int


def read_header(path: Path) -> Header | None:
    """The model's header, or None where the file is not a model of this version (a file cut
    short by a killed run, an older layout): it is then made again."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except OSError:
        return None
    if len(head) < _HEADER.size:
        return None
    magic, version, nodes, fam_size, line, lines, lines_offset, f_offset, slots, mode, _ = _HEADER.unpack(head)
    names = {v: k for k, v in MODES.items()}
    if (magic, version, nodes, line, lines_offset) != (MAGIC, VERSION, NODES_MAX, LINE, HEADER) or mode not in names:
        return None
    if f_offset != findings_offset(fam_size) or lines != fam_size // LINE:
        return None
    return Header(fam_size, names[mode], f_offset, slots)


def fits(path: Path, fam_size: int, mode: str) -> bool:
    """Whether the model at `path` is one for this FAM size and mode, whole."""
    head = read_header(path)
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return head is not None and (head.fam_size, head.mode) == (fam_size, mode) and size == file_size(fam_size)


class Finding(NamedTuple):
    kind: str
    writer_node: int
    reader_node: int
    writer_pc: int
    reader_pc: int
    count: int
    first_offset: int
    last_offset: int


def findings(path: Path) -> list[Finding]:
    """Every finding in the model, most frequent first."""
    head = read_header(path)
    if head is None:
        return []
    out = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        table = m[head.findings_offset:head.findings_offset + head.findings_slots * SLOT]
    for start in range(0, len(table), SLOT):
        if table[start:start + 8] == b"\0" * 8:
            continue  # an empty slot (most of them: read as one slice, skipped cheaply)
        key, kind, wnode, rnode, _, wpc, rpc, count, first, last, _ = _SLOT.unpack_from(table, start)
        if count and kind in KINDS:
            out.append(Finding(KINDS[kind], wnode, rnode, wpc, rpc, count, first, last))
    return sorted(out, key=lambda f: (-f.count, f.kind, f.writer_pc, f.reader_pc))


def counters(path: Path) -> list[dict[str, int]]:
    """Per node, what its plugin has seen of the FAM since the model was made: boots, loads,
    stores, non-temporal stores, flushes, fences, findings, flushes never resolved to a line;
    and the plugin's own check: pages it asked QEMU about again, and those it had wrong."""
    with open(path, "rb") as f:
        f.seek(COUNTERS_OFFSET)
        raw = f.read(PAGE_COUNTERS_OFFSET + NODES_MAX * 64 - COUNTERS_OFFSET)
    pages = PAGE_COUNTERS_OFFSET - COUNTERS_OFFSET
    return [dict(zip(COUNTERS, _COUNTERS.unpack_from(raw, i * 64)))
            | dict(zip(PAGE_COUNTERS, _PAGE_COUNTERS.unpack_from(raw, pages + i * 64)))
            for i in range(NODES_MAX)]


def reset_findings(path: Path) -> None:
    """Count again from nothing (doit coherence --reset): every slot zeroed, the lines' states
    kept (they are what the nodes' caches hold now). A finding made by a node while this runs may
    be half-zeroed and is then dropped: a count, not a record, is lost."""
    head = read_header(path)
    if head is None:
        return
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        with mmap.mmap(fd, 0) as m:
            m[head.findings_offset:head.findings_offset + head.findings_slots * SLOT] = \
                bytes(head.findings_slots * SLOT)
        os.fsync(fd)
    finally:
        os.close(fd)


def resident_bytes(path: Path) -> int:
    """Bytes of the model that are not a hole (the lines nodes touched, and the header): what
    it costs in memory once every node maps it."""
    return os.stat(path).st_blocks * 512
