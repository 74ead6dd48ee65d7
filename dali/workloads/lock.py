"""lock: every node increments a shared counter in a file, each increment a read-modify-write
under an exclusive lock taken across nodes; the counter must end equal to the increments made.

Two counters, one per kind of lock (they do not exclude each other on Linux): counter-fcntl
under fcntl(F_SETLKW) write locks, counter-flock under flock(LOCK_EX). The record holds the total
and each node's own count, so a lost update is pinned on the node whose increment vanished,
also when another node died mid-run (after ocfs2-test's flock_unit and lvb_torture, which check
that a lock's holder sees the previous holder's writes). kind=none takes no lock at all: the
control that shows the checker finds lost updates.
"""

from __future__ import annotations

import fcntl
import os
import time

from .common import BLOCK, Context, Recorder, Verdict, wait_for

NAME = "lock"
DOC = ("a shared counter in a file, incremented by every node under an exclusive fcntl lock "
       "and under flock; it must end equal to the increments made")
NEEDS = ("dir",)
WHY_NOT = {kind: "it works on files: it needs a filesystem (fs.type = \"ocfs2\")" for kind in ("block", "dax")}
PARAMS = {"kind": "both"}  # both, fcntl, flock, or none (no lock: the broken control)
KINDS = {"both": ("fcntl", "flock"), "fcntl": ("fcntl",), "flock": ("flock",), "none": ("none",)}
# Locks a cluster stack keeps on each node: an increment lost under them is the stack's design,
# said as such by the judge (it fails no run). o2cb has cluster-wide flock but keeps POSIX
# (fcntl) locks node-local; only the user stack (corosync/pacemaker) has cluster plocks.
NODE_LOCAL = {("o2cb", "fcntl"): "fcntl locks are not cluster-wide on this stack: o2cb keeps POSIX "
                                 "locks node-local (only OCFS2's user stack has cluster plocks)"}
NOT_CLUSTER_WIDE = "not cluster-wide"


def _record(total: int, counts: list[int]) -> bytes:
    text = " ".join(map(str, [total, *counts])) + "\n"
    return text.encode().ljust(BLOCK, b" ")


def _parse(data: bytes, nodes: int) -> tuple[int, list[int]] | None:
    try:
        values = [int(x) for x in data.split()]
    except ValueError:
        return None
    return (values[0], values[1:]) if len(values) == nodes + 1 else None


def _lock(fd: int, kind: str, how: int) -> None:
    if kind == "fcntl":
        fcntl.lockf(fd, fcntl.LOCK_EX if how else fcntl.LOCK_UN)
    elif kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX if how else fcntl.LOCK_UN)


def _paths(ctx: Context) -> dict[str, str]:
    return {k: os.path.join(ctx.workdir, f"counter-{k}") for k in KINDS[ctx.params["kind"]]}


def run(ctx: Context, rec: Recorder) -> dict:
    os.makedirs(ctx.workdir, exist_ok=True)
    paths = _paths(ctx)
    if ctx.index == 0:
        for path in paths.values():
            with open(path + ".new", "wb") as f:
                f.write(_record(0, [0] * ctx.nodes))
            os.rename(path + ".new", path)
    fds = {}
    for kind, path in paths.items():
        wait_for(lambda: os.path.getsize(path) == BLOCK, f"{path} from the first node")
        fds[kind] = os.open(path, os.O_RDWR)
    made = {kind: 0 for kind in paths}
    turn = 0
    rec.begin()
    while rec.running():
        kind = list(paths)[turn % len(paths)]
        turn += 1
        fd = fds[kind]
        with rec.op():
            _lock(fd, kind, 1)
            try:
                parsed = _parse(os.pread(fd, BLOCK, 0), ctx.nodes)
                if parsed is None:
                    rec.violation("torn", f"counter-{kind}: the record read under the lock is garbled")
                    continue
                total, counts = parsed
                counts[ctx.index] += 1
                if kind == "none":
                    time.sleep(0.001)  # the window an unlocked read-modify-write leaves open
                os.pwrite(fd, _record(total + 1, counts), 0)
                made[kind] += 1
            finally:
                _lock(fd, kind, 0)
    return rec.result({"made": made})


def check(ctx: Context) -> dict:
    seen = {}
    for kind, path in _paths(ctx).items():
        with open(path, "rb") as f:
            parsed = _parse(f.read(), ctx.nodes)
        seen[kind] = None if parsed is None else {"total": parsed[0], "counts": parsed[1]}
    return {"seen": seen}


def judge(ctx: Context, runs: dict, checks: dict) -> Verdict:
    v = Verdict()
    views = {node: c["seen"] for node, c in checks.items() if c is not None}
    order = list(runs)
    for kind in KINDS[ctx.params["kind"]]:
        values = {node: view.get(kind) for node, view in views.items()}
        if not values:
            continue
        texts = [repr(x) for x in values.values()]
        common = max(set(texts), key=texts.count)
        for node, value in values.items():
            if value is None:
                v.add(node, "torn", f"counter-{kind}: the final record is garbled")
            elif repr(value) != common:
                v.add(node, "disagree", f"counter-{kind}: reads {value['total']}, most nodes another value")
        final = next((x for x in values.values() if repr(x) == common), None)
        if final is None:
            continue
        for index, node in enumerate(order):
            state = runs[node]
            counted = final["counts"][index]
            if state is None:
                continue  # its own tally died with it
            made = state["made"][kind]
            local = NODE_LOCAL.get((ctx.stack, kind))
            if local and made > counted:
                v.expected[f"{kind} {NOT_CLUSTER_WIDE}"] = local
            v.add(node, f"{kind} {NOT_CLUSTER_WIDE}" if local else "lost update",
                  f"counter-{kind}: {made - counted} of its {made} increments were lost (the record "
                  f"counts {counted})", made - counted)
        if final["total"] != sum(final["counts"]):  # lost updates leave it consistent; this is worse
            v.add(order[0], "inconsistent", f"counter-{kind}: total {final['total']}, but the "
                  f"nodes' counts add up to {sum(final['counts'])}",
                  abs(final["total"] - sum(final["counts"])))
    return v
