"""block: with no filesystem, every node writes its own region of the shared device and reads
all the others' with direct I/O, sustained: what `doit verify` checks once, for the whole run.

Each node's region is a header block and `blocks` data blocks. A writer's round r sets its
header to 2r-1, writes every data block with contents that name (node, block, round), then sets
the header to 2r (a seqlock on the device). A reader reads a header, the data, the header
again: when both agree and are even, every block must hold exactly that round (else torn or
stale), and a header must never go back. At the end every node must read every region as its
writer left it. Direct I/O (O_DIRECT) on a block device, a mapping on device-dax: no node's
cache stands between it and the device.
"""

from __future__ import annotations

import struct

from .common import BLOCK, Context, Device, Recorder, Verdict

NAME = "block"
DOC = ("no filesystem: each node writes its own regions and reads all others' with direct I/O, "
       "sustained; torn, stale and lost blocks counted")
NEEDS = ("block", "dax")
WHY_NOT = {"dir": "the device holds the filesystem, which block would overwrite: it runs with "
                  "fs.type = \"none\""}
PARAMS = {"blocks": 32}
MAGIC = 0x6461_6c69_626c_6b00  # "dalibk"


def area_size(nodes: int, params: dict) -> int:
    """The bytes block works on: the host saves and zeroes them first, and puts them back."""
    return nodes * (1 + int(params["blocks"])) * BLOCK


def contents(node: int, block: int, rnd: int) -> bytes:
    return struct.pack("<QQQQ", MAGIC, node, block, rnd) * (BLOCK // 32)


def header(seq: int) -> bytes:
    return struct.pack("<QQ", MAGIC, seq).ljust(BLOCK, b"\0")


def _seq(data: bytes) -> int:
    magic, seq = struct.unpack_from("<QQ", data)
    return seq if magic == MAGIC else 0


class Regions:
    def __init__(self, ctx: Context):
        self.blocks = int(ctx.params["blocks"])
        self.dev = Device(ctx.target, ctx.kind, ctx.area)

    def base(self, node: int) -> int:
        return node * (1 + self.blocks) * BLOCK

    def header(self, node: int) -> int:
        return _seq(self.dev.read(self.base(node), BLOCK))

    def data(self, node: int) -> bytes:
        return self.dev.read(self.base(node) + BLOCK, self.blocks * BLOCK)

    def expected(self, node: int, rnd: int) -> bytes:
        return b"".join(contents(node, b, rnd) for b in range(self.blocks))

    def wrong_blocks(self, node: int, rnd: int, data: bytes) -> list[int]:
        return [b for b in range(self.blocks)
                if data[b * BLOCK:(b + 1) * BLOCK] != contents(node, b, rnd)]


def run(ctx: Context, rec: Recorder) -> dict:
    regions = Regions(ctx)
    me, rnd, turn = ctx.index, 0, 0
    last = {}
    size = regions.blocks * BLOCK
    rec.begin()
    while rec.running():
        rnd += 1
        with rec.op(size + 2 * BLOCK):
            regions.dev.write(regions.base(me), header(2 * rnd - 1))
            regions.dev.write(regions.base(me) + BLOCK, regions.expected(me, rnd))
            regions.dev.write(regions.base(me), header(2 * rnd))
        others = [n for n in range(ctx.nodes) if n != me] or [me]
        other = others[turn % len(others)]
        turn += 1
        with rec.op(size + 2 * BLOCK):
            s1 = regions.header(other)
            data = regions.data(other)
            s2 = regions.header(other)
        if s1 < last.get(other, 0):
            rec.violation("went back", f"node {other}'s header went from {last[other]} back to {s1}")
        last[other] = max(last.get(other, 0), s1)
        if s1 != s2 or s1 % 2 or s1 == 0:
            rec.note("raced a writer")
            continue
        wrong = regions.wrong_blocks(other, s1 // 2, data)
        if wrong:
            rec.violation("torn", f"node {other}, round {s1 // 2}: blocks {wrong[:5]} hold other "
                          "data under a settled header")
    return rec.result({"rounds": rnd})


def check(ctx: Context) -> dict:
    regions = Regions(ctx)
    seen = {}
    for node in range(ctx.nodes):
        seq = regions.header(node)
        wrong = regions.wrong_blocks(node, seq // 2, regions.data(node)) if seq and not seq % 2 else None
        seen[str(node)] = {"seq": seq, "wrong": wrong}
    return {"seen": seen}


def judge(ctx: Context, runs: dict, checks: dict) -> Verdict:
    v = Verdict()
    for index, (writer, state) in enumerate(runs.items()):
        for node, c in checks.items():
            if c is None:
                continue
            got = c["seen"][str(index)]
            if state is not None and got["seq"] != 2 * state["rounds"]:
                v.add(node, "stale", f"{writer}'s region: header {got['seq']}, {writer} finished "
                      f"round {state['rounds']} (header {2 * state['rounds']})")
            elif got["wrong"]:
                v.add(node, "torn", f"{writer}'s region: blocks {got['wrong'][:5]} do not hold round "
                      f"{got['seq'] // 2}", len(got["wrong"]))
    return v
