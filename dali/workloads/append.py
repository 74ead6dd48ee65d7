"""append: every node appends numbered lines to one file with O_APPEND at once; lost,
duplicated, torn and reordered lines are counted, and every node must read the same file.

A line is `node seq crc filler\\n`, always `line` bytes, and written with one write(2): each
node knows how many of its lines were acknowledged. O_APPEND promises that each write lands
whole at the end of the file; across nodes that is the filesystem's cluster locking
(ocfs2-test's write_append_truncate checks the same by re-reading what it wrote).
"""

from __future__ import annotations

import os
import zlib

from .common import Context, Recorder, Verdict, read_file, sha

NAME = "append"
DOC = ("every node appends numbered lines to one file with O_APPEND; lost, duplicated, torn "
       "and reordered lines counted, and every node must read the same file")
NEEDS = ("dir",)
WHY_NOT = {kind: "it works on files: it needs a filesystem (fs.type = \"ocfs2\")" for kind in ("block", "dax")}
PARAMS = {"line": 64}


def line(node: int, seq: int, size: int) -> bytes:
    head = f"{node:04d} {seq:010d}"
    crc = zlib.crc32(head.encode())
    text = f"{head} {crc:08x} "
    return (text + "x" * (size - len(text) - 1) + "\n").encode()


def run(ctx: Context, rec: Recorder) -> dict:
    os.makedirs(ctx.workdir, exist_ok=True)
    size = int(ctx.params["line"])
    fd = os.open(os.path.join(ctx.workdir, "file"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seq = 0
    rec.begin()
    while rec.running():
        data = line(ctx.index, seq, size)
        with rec.op(len(data)):
            wrote = os.write(fd, data)
        if wrote != len(data):
            rec.violation("short write", f"line {seq}: write returned {wrote} of {len(data)} bytes")
        seq += 1
    os.close(fd)
    return rec.result({"acked": seq})


def _ranges(values: list[int]) -> list[list[int]]:
    """Sorted unique numbers as [first, last] runs: 10000 lines in a few pairs."""
    runs: list[list[int]] = []
    for x in values:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return runs


def check(ctx: Context) -> dict:
    size = int(ctx.params["line"])
    data = read_file(os.path.join(ctx.workdir, "file"))
    torn, seqs, disorder = 0, {}, {}
    records = data.split(b"\n")
    if records and records[-1] == b"":
        records.pop()
    else:
        torn += 1 if records else 0  # the file does not end with a whole line
        records = records[:-1]
    for rec in records:
        parts = rec.split(b" ")
        ok = len(rec) == size - 1 and len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit()
        if ok:
            head = parts[0] + b" " + parts[1]
            ok = f"{zlib.crc32(head):08x}".encode() == parts[2] and set(parts[3]) == {ord("x")}
        if not ok:
            torn += 1
            continue
        node, seq = int(parts[0]), int(parts[1])
        mine = seqs.setdefault(node, [])
        if mine and seq <= mine[-1]:
            disorder[node] = disorder.get(node, 0) + 1
        mine.append(seq)
    writers = {}
    for node, mine in seqs.items():
        unique = sorted(set(mine))
        writers[str(node)] = {"ranges": _ranges(unique), "dups": len(mine) - len(unique),
                              "disorder": disorder.get(node, 0)}
    return {"size": len(data), "digest": sha(data), "torn": torn, "writers": writers}


def _count(ranges) -> int:
    return sum(b - a + 1 for a, b in ranges)


def judge(ctx: Context, runs: dict, checks: dict) -> Verdict:
    v = Verdict()
    views = {node: c for node, c in checks.items() if c is not None}
    if not views:
        return v
    digests = [c["digest"] for c in views.values()]
    common = max(set(digests), key=digests.count)
    for node, c in views.items():
        if c["digest"] != common:
            v.add(node, "disagree", f"reads {c['size']} bytes (sha256 {c['digest']}), most nodes "
                  f"another file")
        v.add(node, "torn", f"{c['torn']} torn or garbled line(s) in the file", c["torn"])
    seen = next(c for c in views.values() if c["digest"] == common)
    for index, (node, state) in enumerate(runs.items()):
        mine = seen["writers"].get(str(index), {"ranges": [], "dups": 0, "disorder": 0})
        ranges = mine["ranges"]
        v.add(node, "duplicated", f"{mine['dups']} of its lines appear twice", mine["dups"])
        v.add(node, "reordered", f"{mine['disorder']} of its lines come before an earlier one",
              mine["disorder"])
        if state is None:  # it died: its acknowledged count is unknown, its prefix is not
            top = ranges[-1][1] + 1 if ranges else 0
            v.add(node, "lost", f"{top - _count(ranges)} of its lines before its last one are "
                  "missing", top - _count(ranges))
            continue
        acked = state["acked"]
        kept = _count([[a, min(b, acked - 1)] for a, b in ranges if a < acked])
        v.add(node, "lost", f"{acked - kept} of its {acked} acknowledged lines are missing", acked - kept)
        extra = _count([[max(a, acked), b] for a, b in ranges if b >= acked])
        v.add(node, "unexpected", f"{extra} lines it never wrote", extra)
    return v
