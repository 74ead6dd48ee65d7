"""mmap: one node writes through a MAP_SHARED mapping, the others read through theirs; a read
that shows older data than the writer had already announced is stale, one that mixes two
rounds is torn.

The writer (the first node) runs rounds k = 1, 2, ...: a sequence word set odd, every data page
filled with k, the word set to 2k (a seqlock), then k announced on another channel. A reader
reads the announcement a, then the sequence word, the pages, the word again: when both words
agree and are even, the pages must all hold k = word/2 and k must be at least a. The
announcement goes through read(2)/write(2) of another file on a filesystem (the coherence the
filesystem promises between its page cache, its mappings and its reads), or through another
cache line of the same mapping on device-dax (shared memory's own ordering). At the end every
node must see the writer's last round. ocfs2-test's multi_mmap checks the same with MPI
barriers between writer and readers.

On a bare block device the workload does not run: each node caches its pages on its own, so a
mapping of /dev/pmem0 is not coherent across nodes by design.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

from .common import BLOCK, Context, Recorder, Verdict, u64, wait_for

NAME = "mmap"
DOC = ("one node writes through a MAP_SHARED mapping, the others read through theirs; stale "
       "and torn reads counted (a file on the filesystem, or /dev/dax0.0)")
NEEDS = ("dir", "dax")
WHY_NOT = {"block": "a bare block device is cached by each node on its own, so MAP_SHARED "
                    "mappings of it are not coherent across nodes: set fs.type, or device.mode = devdax"}
PARAMS = {"pages": 4}
ANNOUNCE = 64  # on device-dax: the announcement's own cache line


class Shared:
    """The mapping (sequence word, then data pages) and the announcement channel."""

    def __init__(self, ctx: Context):
        self.pages = int(ctx.params["pages"])
        size = BLOCK * (1 + self.pages)
        if ctx.kind == "dax":
            base, _ = ctx.area  # the host saved these bytes; mappings are 2 MiB aligned
            self.fd = os.open(ctx.target, os.O_RDWR)
            self.map = mmap.mmap(self.fd, 2 << 20, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
            self.afd = None  # the host zeroed the area before the run
            return
        os.makedirs(ctx.workdir, exist_ok=True)
        path, announce = os.path.join(ctx.workdir, "mapped"), os.path.join(ctx.workdir, "announce")
        if ctx.index == 0 and not os.path.exists(path):
            for p, n in ((announce, 8), (path, size)):
                with open(p + ".new", "wb") as f:
                    f.write(bytes(n))
                os.rename(p + ".new", p)
        wait_for(lambda: os.path.exists(announce) and os.path.getsize(path) == size, "the mapped file")
        self.fd = os.open(path, os.O_RDWR)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.afd = os.open(announce, os.O_RDWR)

    def announce(self, k: int) -> None:
        if self.afd is None:
            self.map[ANNOUNCE:ANNOUNCE + 8] = struct.pack("<Q", k)
        else:
            os.pwrite(self.afd, struct.pack("<Q", k), 0)

    def announced(self) -> int:
        if self.afd is None:
            return u64(self.map[ANNOUNCE:ANNOUNCE + 8])
        return u64(os.pread(self.afd, 8, 0))

    def seq(self) -> int:
        return u64(self.map[0:8])

    def data(self) -> bytes:
        return self.map[BLOCK:BLOCK * (1 + self.pages)]

    def pattern(self, k: int) -> bytes:
        return struct.pack("<Q", k) * (BLOCK * self.pages // 8)


def run(ctx: Context, rec: Recorder) -> dict:
    shared = Shared(ctx)
    writer = ctx.index == 0
    k, last, clean = 0, 0, 0
    rec.begin()
    while rec.running():
        if writer:
            k += 1
            with rec.op(BLOCK * shared.pages):
                shared.map[0:8] = struct.pack("<Q", 2 * k - 1)
                shared.map[BLOCK:BLOCK * (1 + shared.pages)] = shared.pattern(k)
                shared.map[0:8] = struct.pack("<Q", 2 * k)
                shared.announce(k)
            if ctx.nodes > 1:
                time.sleep(0.01)  # room for the readers between rounds
                continue
        with rec.op(BLOCK * shared.pages):
            a = shared.announced()
            s1 = shared.seq()
            data = shared.data()
            s2 = shared.seq()
        if s1 != s2 or s1 % 2:
            rec.note("raced the writer")
            continue
        clean += 1
        seen = s1 // 2
        if data != shared.pattern(seen):
            rec.violation("torn", f"round {seen}: the pages hold other rounds' data under a "
                          "settled sequence word")
        if seen < a:
            rec.violation("stale", f"the mapping shows round {seen} after round {a} was announced")
        if seen < last:
            rec.violation("went back", f"the mapping showed round {last}, then {seen}")
        last = max(last, seen)
    return rec.result({"rounds": k if writer else None, "clean reads": clean, "last seen": last})


def check(ctx: Context) -> dict:
    shared = Shared(ctx)
    s = shared.seq()
    return {"seq": s, "whole": s % 2 == 0 and shared.data() == shared.pattern(s // 2)}


def judge(ctx: Context, runs: dict, checks: dict) -> Verdict:
    v = Verdict()
    writer = next(iter(runs))
    if runs[writer] is None:
        return v  # the writer died: its last round is unknown; the readers' own checks stand
    rounds = runs[writer]["rounds"]
    for node, c in checks.items():
        if c is None:
            continue
        if c["seq"] != 2 * rounds:
            v.add(node, "stale", f"after the run the mapping shows round {c['seq'] / 2:g}, the "
                  f"writer finished round {rounds}")
        elif not c["whole"]:
            v.add(node, "torn", f"after the run the pages do not all hold round {rounds}")
    return v
