"""The whole cluster at one instant: `doit snapshot NAME` and `doit rollback NAME`
(docs/snapshots.md; where snapshots are kept and what each holds: dali/snapshot_store.py).

Taking one. Every running node is paused, one right after the other (dali/pauses.py: resumed
however the run ends, by the next doit after a SIGKILL); while all are paused, each one's memory
and device state is saved (libvirt's memory-only external snapshot: the node stays paused, its
qemu running), each node's disk is copied, and the FAM once; snapshot.json is written last;
then every node is resumed and its wall clock set. A shut-off cluster is copied as it is: disks
and the FAM.

QEMU saves a memory-backend-file's pages with a node's memory, share=on or not: each node's
memory file holds the FAM as that node saw it, and restoring it writes those pages back into
the FAM (measured: docs/snapshots.md). All are saved while every node is paused, so every copy
is the same, and the FAM itself is also copied once, on its own, for nodes that were off and for
a rollback's first step. Never restore one node's memory while another node uses the FAM: it
would rewrite the FAM under it. So a rollback is always of the whole cluster.

Rolling back, in this order, each step written down first in state/<tag>/rollback.json:
    every node that runs is forced off (what it held is thrown away, as the user asked);
    the FAM rewritten in place from the snapshot's copy (its inode, mark and allocation stay);
    each node's disk replaced whole by the snapshot's copy;
    each node that ran restored from its memory file, paused;
    all of them resumed, one right after the other, and their wall clocks set.
Stopped anywhere (Ctrl-C, SIGKILL, a failure), the next doit that uses the nodes finishes it
from the journal (converge): the steps not done are done again, from the snapshot, which a
rollback never changes; a node the stopped rollback had restored is kept if it is still that
run of its qemu, and forced off otherwise. No half-restored cluster is left running: until the
nodes are resumed at the end, every one is off or paused.

Every check comes before the first change (refusal): the snapshot of this cluster and whole,
the same nodes, each one's definition as it was (libvirt's, less the security labels libvirt
adds as it starts a domain), each disk's backing file still there, your kernel's files the same,
and the FAM of the same size.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path

import libvirt

from dali import fam, lock, pauses
from dali.cluster import Cluster
from dali.errors import DaliError, one_line
from dali.fanout import each
from dali.reporter import log
from dali.snapshot_store import (FAM, FORMAT, Snapshot, check_name, disk_file, find, folder, is_whole,
                                 memory_file, mib, read, remove_leftovers, size_of, write)
from dali.storage import Storage
from dali.virt import Libvirt, memory_file_domain


# --- what a snapshot records --------------------------------------------------------------------

def _kernel_files(cluster: Cluster, files: Storage) -> dict[str, str]:
    """Your kernel's files as the nodes boot them (kernel.path), each with what tells it from
    one made again: a rebuilt kernel is refused by a rollback, whose memory holds the old one."""
    if cluster.own_kernel is None:
        return {}
    found = {}
    for name in ("bzImage", "initramfs.cpio", "modules.img"):
        path = files.kernel_dir / name
        if files.exists(path):
            found[str(path)] = files.identity(path)
    return found


def refusal(cluster: Cluster, files: Storage, virt: Libvirt, snap: Snapshot) -> str | None:
    """Why the cluster cannot go back to `snap` now, as one line; None if it can. Nothing is
    changed before this is asked."""
    names = [n.name for n in cluster.nodes]
    if sorted(names) != sorted(snap.nodes):
        added = sorted(set(names) - set(snap.nodes))
        gone = sorted(set(snap.nodes) - set(names))
        return (f"snapshot {snap.name} is of nodes {', '.join(snap.nodes)}, and the cluster's are "
                f"{', '.join(names)} ({'added ' + ', '.join(added) if added else ''}"
                f"{'; ' if added and gone else ''}{'removed ' + ', '.join(gone) if gone else ''}): "
                "a rollback puts back the cluster it was taken of; set clones as they were")
    size = files.size(cluster.fam_path)
    if size != snap.meta["fam"]["size"]:
        return (f"{cluster.fam_path}{files.where} is {size} bytes and snapshot {snap.name} holds a FAM of "
                f"{snap.meta['fam']['size']}: a rollback never resizes the FAM")
    for name, facts in snap.nodes.items():
        dom = virt.domain(name)
        if dom is None:
            return f"{name} is not defined (snapshot {snap.name} has it): doit clone first"
        if virt.definition(dom) != facts["definition"]:
            return (f"{name}'s definition changed since snapshot {snap.name} was taken (a setting, "
                    "dali's template, or virsh edit): a snapshot goes back only onto the definitions "
                    "it was taken with; take a new one")
        backing = facts.get("backing")
        if backing and not files.exists(Path(backing)):
            return f"{name}'s disk in snapshot {snap.name} is built on {backing}{files.where}, which is gone"
        if not files.is_ours(disk_file(snap.path, name)):
            return f"snapshot {snap.name} lacks {name}'s disk: doit snapshot --delete {snap.name}"
        if facts.get("running") and memory_file_domain(memory_file(snap.path, name)) != name:
            return (f"snapshot {snap.name}'s memory of {name} is not a whole save of it: "
                    f"doit snapshot --delete {snap.name}")
    if _kernel_files(cluster, files) != snap.meta.get("kernel", {}):
        return (f"your kernel's files (kernel.path, in {files.kernel_dir}) changed since snapshot "
                f"{snap.name}: its memory runs the kernel it was taken with; take a new one")
    if not files.is_ours(snap.path / FAM):
        return f"snapshot {snap.name} lacks its FAM: doit snapshot --delete {snap.name}"
    return None


# --- taking one -----------------------------------------------------------------------------------

def _nodes_as_they_are(cluster: Cluster, virt: Libvirt) -> list[tuple[str, object, bool]]:
    """(name, domain, running) of every node; refused unless each is defined, and running or
    shut off (a paused or crashed node's state is no point to come back to)."""
    out = []
    for node in cluster.nodes:
        dom = virt.domain(node.name)
        if dom is None:
            raise DaliError(f"{node.name} is not defined: doit clone first")
        state, _ = dom.state()
        if state == libvirt.VIR_DOMAIN_PAUSED:
            raise DaliError(f"{node.name} is paused (by you, or a debugger on its gdb stub): resume it "
                            f"(virsh resume {node.name}) or force it off (doit destroy {node.suffix}) first")
        if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_SHUTOFF):
            raise DaliError(f"{node.name} is neither running nor shut off (state {state}): doit start "
                            f"or doit destroy {node.suffix} first")
        out.append((node.name, dom, state == libvirt.VIR_DOMAIN_RUNNING))
    return out


def _refuse_memory(cluster: Cluster, virt: Libvirt, running: list) -> None:
    """What keeps a running node's memory out of reach of a save and restore."""
    if not running:
        return
    if cluster.shares:
        raise DaliError("[[share]]: a node with a shared directory (virtiofs) cannot have its memory "
                        "saved (libvirt refuses to migrate it): shut the nodes down and take a snapshot "
                        "of their disks and the FAM, or leave the shares out")
    for name, dom, _ in running:
        extra = virt.live_only_disks(dom)
        if extra:
            raise DaliError(f"{name} has disk {', '.join(extra)} attached beyond its definition (doit "
                            "torture --compare-disk's shared disk): doit restart first, which boots the "
                            "nodes without it")


def _room(cluster: Cluster, files: Storage, running: list) -> None:
    """Refused, before anything is made, when the copies may not fit: what a copy of the disks
    and the FAM takes without shared blocks, and each running node's memory with the FAM's."""
    fam_data = files.allocated(cluster.fam_path)
    needed = fam_data + sum(files.allocated(cluster.disk(n)) for n in cluster.nodes)
    needed += len(running) * (cluster.memory + fam_data)
    free = files.bytes_free()
    if needed > free:
        raise DaliError(f"a snapshot may take {mib(needed)} and {mib(free)} are free where the cluster's "
                        f"files are{files.where}: free some (doit snapshot --delete an old one)")


def take(cluster: Cluster, files: Storage, virt: Libvirt, name: str) -> Snapshot:
    """`doit snapshot NAME`: the whole cluster at one instant (see the top of this module)."""
    check_name(name)
    problem = files.snapshot_problem()
    if problem:
        raise DaliError(problem)
    if cluster.coherence != "off":
        raise DaliError(f"device.coherence = {cluster.coherence!r}: the checker's model of the FAM "
                        f"({cluster.coherence_model.name}) and what its plugins hold are not part of a "
                        "snapshot; set device.coherence = \"off\" to take snapshots")
    existing = read(cluster, files, name)
    if existing is not None:
        raise DaliError(f"snapshot {name} exists (taken {existing.taken}): doit snapshot --delete "
                        f"{name} first, or give another name")
    nodes = _nodes_as_they_are(cluster, virt)
    running = [(n, d, r) for n, d, r in nodes if r]
    _refuse_memory(cluster, virt, running)
    _room(cluster, files, running)

    path = folder(files, name)
    files.remove_folder(path)  # what a stopped take of the same name left
    files.make_folder(path)
    meta = {"format": FORMAT, "name": name, "id": secrets.token_hex(16), "cluster": cluster.id,
            "tag": cluster.tag, "fam": {"size": files.size(cluster.fam_path),
                                        "namespace": fam.held(cluster, files).get("uuid", "raw")},
            "kernel": _kernel_files(cluster, files), "nodes": {}}
    for node_name, dom, ran in nodes:
        meta["nodes"][node_name] = {"running": ran, "definition": virt.definition(dom),
                                    "backing": files.backing(cluster.disk(node_name))}
    try:
        ways = _copy(cluster, files, virt, path, nodes, running, meta)
    except (DaliError, libvirt.libvirtError):
        files.remove_folder(path)  # a snapshot is whole or absent (a kill leaves it to converge)
        raise
    _set_clocks(virt, [d for _, d, _ in running])
    snap = Snapshot(name, path, meta)
    on_disk, as_files = size_of(files, snap)
    log(f"snapshot {name}: {', '.join(n for n, _, _ in nodes)} ("
        + (f"memory of {', '.join(n for n, _, _ in running)}; " if running else "all shut off; ")
        + f"disks and the FAM by {' and '.join(sorted(ways))}), {mib(on_disk)} on disk ({mib(as_files)} as "
        f"files), taken in {meta['took']:.1f} s" + (f", the nodes paused for {meta['paused_for']:.1f} s"
                                                    if running else ""))
    return snap


def _copy(cluster: Cluster, files: Storage, virt: Libvirt, path: Path, nodes: list, running: list,
          meta: dict) -> set[str]:
    """The snapshot's files, the running nodes paused meanwhile, and its snapshot.json last.
    Says how the copies were made."""
    t0 = time.monotonic()
    ways = set()
    for node_name, dom, ran in nodes:  # the disks of nodes that are off need no pause
        if not ran:
            ways.add(files.clone_file(cluster.disk(node_name), disk_file(path, node_name)))
    with pauses.paused_together(cluster, virt, [d for _, d, _ in running]) as paused:
        paused_at = time.monotonic()
        meta["taken"] = time.time()
        if paused:
            log(f"paused {', '.join(d.name() for d in paused)}; saving their memory")
        for node_name, dom, _ in running:
            t = time.monotonic()
            files.save_memory(dom, memory_file(path, node_name))
            log(f"{node_name}: memory saved in {time.monotonic() - t:.1f} s")
        for node_name, dom, _ in running:
            ways.add(files.clone_file(cluster.disk(node_name), disk_file(path, node_name)))
        ways.add(files.clone_file(cluster.fam_path, path / FAM))
        meta["paused_for"] = round(time.monotonic() - paused_at, 2) if paused else 0
        meta["took"] = round(time.monotonic() - t0, 2)
        write(files, path, meta)
    return ways


def _set_clocks(virt: Libvirt, doms: list) -> None:
    """Each node's wall clock set to the host's: paused or restored, a node's clock stands where
    it stopped (its monotonic clock rightly so). A node whose agent does not answer is named."""
    def set_one(dom, _):
        try:
            virt.set_clock(dom)
            return None
        except libvirt.libvirtError as e:
            return f"{dom.name()} ({e.get_error_message() or e})"
    silent = [s for s in each([(d, None) for d in doms], set_one) if s]
    if silent:
        log(f"clock not set on {'; '.join(silent)}: it lags by the time it spent paused")


# --- rolling back ---------------------------------------------------------------------------------

def journal_file(cluster: Cluster) -> Path:
    return cluster.state_dir / "rollback.json"


def pending(cluster: Cluster) -> bool:
    """Whether a rollback was stopped before it finished (the next doit finishes it)."""
    return journal_file(cluster).exists()


def _read_journal(cluster: Cluster) -> dict | None:
    try:
        return json.loads(journal_file(cluster).read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # never half-written (rename), but a hand could spoil it
        return {"name": "?", "id": None, "done": [], "restored": {}}


_journal_lock = threading.Lock()


def _write_journal(cluster: Cluster, journal: dict) -> None:
    """Whole or not at all, and on the disk before the step it announces begins."""
    with _journal_lock:
        path = journal_file(cluster)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = path.with_name(path.name + ".new")
        with open(new, "w") as f:
            json.dump(journal, f)
            f.flush()
            os.fsync(f.fileno())
        new.replace(path)


def rollback(cluster: Cluster, files: Storage, virt: Libvirt, name: str) -> None:
    """`doit rollback NAME`: every node and the FAM back to the snapshot; the nodes that ran then
    resumed together (see the top of this module). Refused before anything changes."""
    check_name(name)
    if pending(cluster):  # converge, which every rollback runs first, could not finish it
        raise DaliError(f"a stopped rollback is written down in {journal_file(cluster)}: run doit again "
                        "to finish it first")
    snap = find(cluster, files, name)
    problem = refusal(cluster, files, virt, snap)
    if problem:
        raise DaliError(problem)
    t0 = time.monotonic()
    journal = {"name": name, "id": snap.meta["id"], "started": time.time(), "done": [], "restored": {}}
    _write_journal(cluster, journal)
    discarded = _carry_out(cluster, files, virt, snap, journal)
    log(f"rolled back to snapshot {name} (taken {snap.taken}) in {time.monotonic() - t0:.1f} s: "
        + (f"{', '.join(snap.running)} running" if snap.running else "every node shut off")
        + (f"; {', '.join(discarded)} forced off first (what they ran is gone)" if discarded else ""))


def _still_restored(virt: Libvirt, dom, run: str | None) -> bool:
    """Whether dom is the run of its qemu this rollback restored."""
    try:
        return run is not None and bool(dom.isActive()) and virt.run_of(dom) == run
    except libvirt.libvirtError:
        return False


def _carry_out(cluster: Cluster, files: Storage, virt: Libvirt, snap: Snapshot, journal: dict) -> list[str]:
    """The rollback's steps that the journal does not say are done, in order. Returns the nodes
    whose running state it threw away."""
    done, restored = journal["done"], journal["restored"]

    def mark(step: str) -> None:
        done.append(step)
        _write_journal(cluster, journal)

    discarded = []
    for name in snap.nodes:  # every node off, but one this rollback restored (still that run)
        dom = virt.domain(name)
        if dom is None or not dom.isActive():
            restored.pop(name, None)
            continue
        if _still_restored(virt, dom, restored.get(name)):
            continue
        restored.pop(name, None)
        dom.destroy()
        discarded.append(name)
    _write_journal(cluster, journal)
    if "fam" not in done:
        files.copy_into(snap.path / FAM, cluster.fam_path)
        fam.forget_saved(cluster)  # bytes a stopped verify or torture overwrote: the FAM is replaced
        mark("fam")
    for name in snap.nodes:
        if f"disk:{name}" not in done:
            files.clone_file(disk_file(snap.path, name), cluster.disk(name))
            mark(f"disk:{name}")

    if set(snap.running) - set(restored):  # written down before libvirt is asked (it may finish without us)
        journal["restoring"] = snap.running
        _write_journal(cluster, journal)

    def restore(name, _):
        if name in restored:
            return
        virt.restore_paused(memory_file(snap.path, name))
        dom = virt.domain(name)
        with _journal_lock:
            restored[name] = virt.run_of(dom)
        _write_journal(cluster, journal)
    each([(n, None) for n in snap.running], restore)

    doms = [virt.domain(n) for n in snap.running]
    for dom in doms:  # together: one right after the other
        if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
    mark("resumed")
    _set_clocks(virt, doms)
    journal_file(cluster).unlink(missing_ok=True)
    return discarded


# --- what a stopped doit left ---------------------------------------------------------------------

def converge(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """What a stopped snapshot, rollback or delete left, carried to its end: the nodes a snapshot
    paused resumed (dali/pauses.py), a rollback finished, the folder of a snapshot never
    finished (or half deleted) removed. Only while no other doit changes the cluster (one that
    still runs carries on with its own). Every command on the nodes asks this first
    (lifecycle.domains), and so does the FAM's task."""
    pauses.resume_left_paused(cluster, virt)
    if files.snapshot_problem():
        return
    journal = _read_journal(cluster)
    left = [p for p in files.folders(files.snapshots_dir) if not is_whole(files, p)]
    if journal is None and not left:
        return
    with lock.held_unless_busy(cluster.lock_file) as ours:
        if not ours:
            return
        journal = _read_journal(cluster)
        if journal is not None:
            _finish(cluster, files, virt, journal)
        remove_leftovers(files)


def _finish(cluster: Cluster, files: Storage, virt: Libvirt, journal: dict) -> None:
    name = journal.get("name", "?")
    try:
        snap = read(cluster, files, name)
    except DaliError:
        snap = None
    if snap is not None and snap.meta.get("id") == journal.get("id"):
        log(f"finishing the rollback to snapshot {name} that a stopped doit began "
            f"({len(journal['done'])} step(s) of it done)")
        try:
            _carry_out(cluster, files, virt, snap, journal)
        except (DaliError, libvirt.libvirtError) as e:
            raise DaliError(f"the rollback to snapshot {name} a stopped doit began cannot finish "
                            f"({one_line(e)}): every doit tries again first; to give it up, remove "
                            f"{journal_file(cluster)} and doit destroy") from None
        return
    # The snapshot is gone (deleted by hand, or replaced): nothing to finish it from. What it
    # restored is half a cluster: forced off, the nodes it wrote down and those libvirt restored
    # after the stopped doit asked (paused: only the end of a rollback resumes them). The FAM
    # and the disks stay as far as it got.
    restored = journal.get("restored", {})
    for node in dict.fromkeys([*restored, *journal.get("restoring", [])]):
        dom = virt.domain(node)
        if dom is None or not dom.isActive():
            continue
        if _still_restored(virt, dom, restored.get(node)) or dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.destroy()
    journal_file(cluster).unlink(missing_ok=True)
    log(f"a rollback to snapshot {name} was stopped, and {name} is gone: every node it touched is "
        "off, and the FAM and the disks are as far as it got (doit reset puts them back to the "
        "frozen state)")
