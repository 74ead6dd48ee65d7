"""append-turns: the nodes take turns appending one line each to a file every node holds open
with O_APPEND (A, B, ..., then A again); every line must be there, in turn order.

The deterministic reproducer of docs/findings/ocfs2-append.md. Each round makes a new file;
every node opens it before anyone writes, then the turns go 0, 1, ..., N-1, 0: a node writes
its line when the node before it says (a marker file) that its own write returned. Nothing
looks at the round's file between the turns: no stat, no read, no second open. That matters:
on OCFS2 any of them refreshes the node's cached i_size, and the bug is an append placed at
that cached size (generic_write_checks before the cluster inode lock), overwriting the lines
the other nodes appended since. A round on a correct filesystem reads back N+1 lines in turn
order; on Debian 6.1's OCFS2 the first turns' lines are gone, every round.

Waiting goes through other files of the directory (markers), never the round's file. A round
waits for its slowest node; a node that dies stops the rounds (the others give up after
TURN_TIMEOUT, and their state says where: a fault's doing, not a violation).
"""

from __future__ import annotations

import os
import time

from .common import Context, Recorder, Verdict, read_file

NAME = "append-turns"
DOC = ("the nodes take turns appending a line to a file each holds open with O_APPEND "
       "(A, B, ..., A); every line must be there in turn order (docs/findings/ocfs2-append.md)")
NEEDS = ("dir",)
WHY_NOT = {kind: "it works on files: it needs a filesystem (fs.type = \"ocfs2\")" for kind in ("block", "dax")}
PARAMS = {"rounds": 1000}  # at most this many rounds; the run's --seconds ends it sooner
TURN_TIMEOUT = 120.0  # a turn that waits longer: the node before it died or hangs
POLL = 0.02


def turns(nodes: int) -> list[int]:
    """Who writes each turn of a round: every node once, then the first again (with one node,
    it writes twice)."""
    return list(range(nodes)) + [0]


def text(node: int, round_: int, turn: int) -> bytes:
    return f"node {node} round {round_} turn {turn}\n".encode()


def _marker(ctx: Context, what: str) -> str:
    return os.path.join(ctx.workdir, what)


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _wait(*paths: str) -> str | None:
    """Until another node makes one of paths: the one it made, or None after TURN_TIMEOUT (the
    node that should have made it died or hangs)."""
    deadline = time.monotonic() + TURN_TIMEOUT
    while time.monotonic() < deadline:
        for path in paths:
            if os.path.exists(path):
                return path
        time.sleep(POLL)
    return None


def _all(paths: list[str]) -> bool:
    return all(_wait(p) for p in paths)


def run(ctx: Context, rec: Recorder) -> dict:
    os.makedirs(ctx.workdir, exist_ok=True)
    order = turns(ctx.nodes)
    mine = [t for t, node in enumerate(order) if node == ctx.index]
    wrote: list[list[int]] = []  # [round, turn] of every line whose write returned in full
    stopped = ""  # why the rounds ended before the time did (a node before this one died)
    rec.begin()
    for r in range(int(ctx.params["rounds"])):
        # Node 0 decides whether another round starts, so that every node plays the same ones.
        go, end = _marker(ctx, f"go-{r}"), _marker(ctx, "end")
        path = _marker(ctx, f"round-{r}")
        if ctx.index == 0:
            if not rec.running():
                _touch(end)
                break
            # The first node alone makes the round's file, before it says go: OCFS2 answers
            # EEXIST to an O_CREAT racing another node's create of the same name.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            _touch(go)
        else:
            got = _wait(go, end)
            if got != go:
                stopped = "" if got == end else f"round {r}: the first node never began it"
                break
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            _touch(_marker(ctx, f"open-{r}-{ctx.index}"))
            for t in mine:
                before = ([_marker(ctx, f"open-{r}-{n}") for n in range(ctx.nodes)] if t == 0
                          else [_marker(ctx, f"turn-{r}-{t - 1}")])
                if not _all(before):
                    stopped = f"round {r} turn {t}: the node before never wrote"
                    break
                line = text(ctx.index, r, t)
                with rec.op(len(line)):
                    n = os.write(fd, line)
                if n == len(line):
                    wrote.append([r, t])
                else:
                    rec.violation("short write", f"round {r} turn {t}: {n} of {len(line)} bytes")
                _touch(_marker(ctx, f"turn-{r}-{t}"))
        finally:
            os.close(fd)
        if stopped or not _wait(_marker(ctx, f"turn-{r}-{len(order) - 1}")):
            stopped = stopped or f"round {r}: its last turn never came"
            break
    return rec.result({"wrote": wrote, "stopped": stopped})


def check(ctx: Context) -> dict:
    """Every round's file as this node reads it: its lines as [node, round, turn], and the
    lines that are not one of ours (torn or overwritten in part)."""
    rounds, garbled = {}, {}
    for name in sorted(os.listdir(ctx.workdir)):
        if not name.startswith("round-"):
            continue
        r = name.split("-", 1)[1]
        lines, bad = [], 0
        for raw in read_file(os.path.join(ctx.workdir, name)).split(b"\n")[:-1] or []:
            words = raw.split(b" ")
            if len(words) == 6 and words[0] == b"node" and all(w.isdigit() for w in words[1::2]):
                lines.append([int(words[1]), int(words[3]), int(words[5])])
            else:
                bad += 1
        rounds[r] = lines
        garbled[r] = bad
    return {"rounds": rounds, "garbled": garbled}


def judge(ctx: Context, runs: dict, checks: dict) -> Verdict:
    """A line whose write returned and that is not in its round's file was overwritten; lines
    out of turn order were placed wrongly; nodes must read the same files."""
    v = Verdict()
    views = {node: c for node, c in checks.items() if c is not None}
    if not views:
        return v
    texts = [repr(c["rounds"]) for c in views.values()]
    common = max(set(texts), key=texts.count)
    for node, c in views.items():
        if repr(c["rounds"]) != common:
            v.add(node, "disagree", "reads the round files otherwise than most nodes")
    seen = next(c for c in views.values() if repr(c["rounds"]) == common)
    order = list(runs)
    for r, lines in sorted(seen["rounds"].items(), key=lambda x: int(x[0])):
        if seen["garbled"].get(r):
            v.add(order[0], "torn", f"round {r}: {seen['garbled'][r]} line(s) not whole", seen["garbled"][r])
        present = {(n, t) for n, _, t in lines}
        turn_order = [t for _, _, t in lines]
        if turn_order != sorted(turn_order):
            v.add(order[0], "reordered", f"round {r}: turns read in the order {turn_order}")
        for index, node in enumerate(order):
            state = runs[node]
            if state is None:
                continue  # it died: what it acknowledged is unknown
            for wr, t in state["wrote"]:
                if str(wr) == r and (index, t) not in present:
                    v.add(node, "overwritten", f"round {r}: its line of turn {t} is gone "
                          f"(the file holds turns {turn_order})")
    return v
