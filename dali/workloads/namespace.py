"""namespace: create, write, rename and unlink from every node at once in one directory; at the
end every node must see exactly the same names with the same contents, the set the operations
imply.

Three kinds of names, after ocfs2-test's programs:
- o<i>-<k> (and o<i>-<k>.moved): node i's own files, created, rewritten, renamed back and forth
  and unlinked at random. Node i knows exactly which exist and what they hold.
- h<i>-<n>: hand-offs (cross_delete): node i makes each one whole (written under a temporary
  name, then renamed), and the next node (i+1 mod N) reads it, checks it is exactly what i
  wrote, and unlinks it. A hand-off listed but gone, or read with other contents, is a violation.
- r-<k>: racers (create_racer): every node creates, renames and unlinks the same few names;
  nobody knows the outcome, but every node must see the same one, and every racer whole.
Every file starts with a line naming what it should hold (common.labelled), so a torn or
mixed-up file is found even where the outcome is unknown.
"""

from __future__ import annotations

import errno
import os
import random
import re

from .common import Context, Recorder, Verdict, is_labelled, labelled, read_file, sha

NAME = "namespace"
DOC = ("create, write, rename, unlink (own files, hand-offs to the next node, racers) from "
       "every node; all must end seeing the same names and contents, the ones implied")
NEEDS = ("dir",)
WHY_NOT = {kind: "it works on files: it needs a filesystem (fs.type = \"ocfs2\")" for kind in ("block", "dax")}
PARAMS = {"files": 32, "racers": 8}


def _size(rnd: random.Random) -> int:
    return rnd.choice((0, 100, 4096, 5000, 12288))


def run(ctx: Context, rec: Recorder) -> dict:
    d = ctx.workdir
    os.makedirs(d, exist_ok=True)
    i, n = ctx.index, ctx.nodes
    prev = (i - 1) % n
    rnd = random.Random(ctx.seed * 7919 + i)
    files, racers = int(ctx.params["files"]), int(ctx.params["racers"])
    own: dict[int, tuple[str, str]] = {}  # k -> (current name, label of its contents)
    versions: dict[int, int] = {}
    made = 0  # hand-offs h<i>-0 .. h<i>-<made-1> made
    raced = 0
    taken: list[str] = []  # hand-offs of the previous node that this node unlinked

    def path(name):
        return os.path.join(d, name)

    rec.begin()
    def write_new(name, label, size, flags):
        data = labelled(label, size)
        with rec.op(len(data)):
            fd = os.open(path(name), flags, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    while rec.running():
        r = rnd.random()
        try:
            if r < 0.55:  # own files
                k = rnd.randrange(files)
                if k not in own:
                    versions[k] = versions.get(k, 0) + 1
                    name, label = f"o{i}-{k}", f"o{i}-{k}.v{versions[k]}"
                    try:
                        write_new(name, label, _size(rnd), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        rec.violation("resurrected", f"{name}: created, but it exists though "
                                      "this node unlinked it (only this node touches it)")
                        continue
                    own[k] = (name, label)
                    continue
                name, label = own[k]
                what = rnd.random()
                if what < 0.4:
                    versions[k] += 1
                    label = f"o{i}-{k}.v{versions[k]}"
                    write_new(name, label, _size(rnd), os.O_WRONLY | os.O_TRUNC)
                    own[k] = (name, label)
                elif what < 0.75:
                    other = name[:-len(".moved")] if name.endswith(".moved") else name + ".moved"
                    with rec.op():
                        os.rename(path(name), path(other))
                    own[k] = (other, label)
                else:
                    with rec.op():
                        os.unlink(path(name))
                    del own[k]
            elif r < 0.75:  # make a hand-off, whole, for the next node
                name, size = f"h{i}-{made}", _size(rnd)
                write_new(f".t{i}-{made}", name, size, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                with rec.op():
                    os.rename(path(f".t{i}-{made}"), path(name))
                made += 1
            elif r < 0.9:  # take the previous node's hand-offs
                with rec.op():
                    listed = sorted(x for x in os.listdir(d) if x.startswith(f"h{prev}-"))
                for name in listed[:8]:
                    try:
                        with rec.op():
                            data = read_file(path(name))
                            os.unlink(path(name))
                    except FileNotFoundError:
                        rec.violation("vanished", f"{name}: listed, then gone before this node "
                                      "(the only one that removes it) did")
                        continue
                    taken.append(name)
                    if not is_labelled(data) or data.split(b" ", 2)[1].decode() != name:
                        rec.violation("wrong contents", f"{name}: read {len(data)} bytes that "
                                      "are not what its maker wrote")
            else:  # racers: every node at the same few names
                a, b = f"r-{rnd.randrange(racers)}", f"r-{rnd.randrange(racers)}"
                what = rnd.random()
                try:
                    if what < 0.4:
                        raced += 1  # the label names the writer: a dead node's racer may be half-written
                        write_new(a, f"r{i}-{raced}", _size(rnd), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    elif what < 0.7:
                        with rec.op():  # the contents name a; once renamed to b, still whole
                            os.rename(path(a), path(b))
                    else:
                        with rec.op():
                            os.unlink(path(a))
                except (FileExistsError, FileNotFoundError):
                    rec.note("racer lost a race")
                except PermissionError as e:
                    # OCFS2 refuses a rename onto a name this node's dentry cache holds as absent
                    # and another node has since made (ocfs2_rename: "someone else in the cluster
                    # must have raced our rename to create one"): a spurious error POSIX does not
                    # allow, with nothing changed. Its own kind, for the baseline to name.
                    if e.errno != errno.EACCES or not 0.4 <= what < 0.7:
                        raise
                    rec.violation("rename EACCES", f"rename({a}, {b}): {e.strerror}: a name another "
                                  "node made meanwhile")
        except OSError as e:
            if e.errno in (errno.EIO, errno.ESTALE, errno.EROFS):
                rec.violation("I/O error", f"{e.strerror} ({e.filename})")
                continue
            raise
    state = {"own": {name: label for name, label in own.values()}, "made": made, "taken": taken}
    return rec.result(state)


def check(ctx: Context) -> dict:
    """What this node sees: every name, whether its contents are whole, and which label."""
    seen = {}
    for name in sorted(os.listdir(ctx.workdir)):
        data = read_file(os.path.join(ctx.workdir, name))
        head = data.split(b"\n", 1)[0].split(b" ")
        label = head[1].decode(errors="replace") if len(head) == 3 else "?"
        seen[name] = [sha(data), is_labelled(data), label]
    return {"seen": seen}


def _writer(text: str) -> int | None:
    """The node that wrote a name or a label: o<i>-, .t<i>-, h<i>-, r<i>- (racers' labels)."""
    m = re.match(r"^(?:\.t|[ohr])(\d+)-", text)
    return int(m.group(1)) if m else None


def _half_written_by_the_dead(name: str, label: str, dead: set[int]) -> bool:
    if not dead:
        return False
    writer = _writer(name) if _writer(name) is not None else _writer(label)
    return writer is None or writer in dead


def judge(ctx: Context, runs: dict, checks: dict) -> Verdict:
    """runs: {node: run state, or None for a node that did not finish}; checks likewise;
    node names in index order."""
    v = Verdict()
    order = list(runs)
    views = {node: c["seen"] for node, c in checks.items() if c is not None}
    if not views:
        return v
    names = sorted(set().union(*views.values()))
    for name in names:  # every node sees the same thing
        versions = {node: tuple(view.get(name, ("absent",))[:1]) for node, view in views.items()}
        common = max(set(versions.values()), key=list(versions.values()).count)
        for node, got in versions.items():
            if got != common:
                v.add(node, "disagree", f"{name}: {'absent' if got == ('absent',) else 'other contents'} "
                      f"here, {'absent' if common == ('absent',) else 'present'} on most nodes")
    reference = next(iter(views.values()))
    dead = {index for index, node in enumerate(order) if runs[node] is None}
    for name in names:
        where = [node for node, view in views.items() if name in view and not view[name][1]]
        if where and _half_written_by_the_dead(name, views[where[0]][name][2], dead):
            continue  # a node that died mid-write leaves what it had written: no fsync, no promise
        for node in where:
            v.add(node, "torn", f"{name}: contents are not what any node wrote (torn or mixed)")
    for index, node in enumerate(order):
        state = runs[node]
        if state is None:
            continue  # a node that died: only agreement and wholeness hold for its names
        mine = {name for name in reference if name.startswith(f"o{index}-")}
        for name, label in state["own"].items():
            for viewer, view in views.items():
                if name not in view:
                    v.add(viewer, "lost", f"{name}: {node} made it ({label}); it is gone")
                elif view[name][2] != label:
                    v.add(viewer, "stale", f"{name}: holds {view[name][2]}, {node} last wrote {label}")
        for name in sorted(mine - set(state["own"])):
            v.add(order[0], "resurrected", f"{name}: {node} unlinked or renamed it away; it is there")
        for name in sorted(x for x in reference if x.startswith(f".t{index}-")):
            v.add(node, "unexpected", f"{name}: {node} renamed it into place; the temporary name is there")
        taker_index = (index + 1) % len(order)
        taker = runs[order[taker_index]]
        made = {f"h{index}-{n}" for n in range(state["made"])}
        present = {name for name in reference if name.startswith(f"h{index}-")}
        if present - made:
            v.add(node, "unexpected", f"hand-offs {sorted(present - made)[:3]} that {node} never made")
        if taker is not None:
            taken = set(taker["taken"])
            for name in sorted(made - taken - present):
                v.add(order[taker_index], "lost", f"{name}: made by {node}, never taken, gone")
            for name in sorted(taken & present):
                v.add(order[taker_index], "resurrected", f"{name}: unlinked by {order[taker_index]}, there again")
    return v

