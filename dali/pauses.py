"""Nodes dali pauses together (`doit dump`: dali/evidence.py; `doit snapshot`: dali/snapshot.py),
resumed however the run that paused them ends.

A paused node counts as running (its qemu runs), so one left paused holds the cluster up: its
guest agent is silent, its OCFS2 peers fence it, every doit waits for it. The run that pauses
resumes on its way out of the with-block (paused_together), and when Ctrl-C, SIGTERM or SIGHUP
stops it (dali/commands.py undone_if_stopped). A SIGKILL gives it no chance, so before the first
pause it writes state/<tag>/paused.json, naming each node it is about to pause and that run of
it; the next command that uses the nodes resumes them from it first (lifecycle.domains), as
long as no other doit holds the cluster's lock (a dump still running holds it, and resumes its
own).

Whichever of the three resumes, it decides from what libvirt says at that moment: a node is
resumed only if it is the same run of the domain (libvirt's domain id, and the run as
virt.run_of tells runs apart where it can) and still paused as the dump left it (reason "user"
from its pause, or "dump" while libvirt dumps it). A node started again since, running, or
paused for another reason is left as it is. libvirt keeps no more than that: a pause the user
makes in the same run of a node, between a killed dump and the next doit, looks like the dump's.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import libvirt

from dali import commands, lock
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.virt import Libvirt

# Paused by dali (reason "user"), and kept paused while libvirt dumps its memory (doit dump) or
# saves it (doit snapshot: libvirt says "snapshot" if its job is still under way).
AS_DALI_LEFT_IT = (libvirt.VIR_DOMAIN_PAUSED_USER, libvirt.VIR_DOMAIN_PAUSED_DUMP,
                   libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT)


def record_file(cluster: Cluster) -> Path:
    return cluster.state_dir / "paused.json"


def _write(cluster: Cluster, virt: Libvirt, doms: list) -> None:
    record = [{"name": d.name(), "id": d.ID(), "run": virt.run_of(d)} for d in doms]
    path = record_file(cluster)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = path.with_name(path.name + ".new")
    new.write_text(json.dumps(record) + "\n")
    new.replace(path)  # whole or not at all: a run killed while writing leaves the old one


def _read(cluster: Cluster) -> list[dict]:
    try:
        return json.loads(record_file(cluster).read_text())
    except FileNotFoundError:
        return []


@contextmanager
def paused_together(cluster: Cluster, virt: Libvirt, doms: list):
    """Pause every running domain of doms, one right after the other; yield those paused.
    They are resumed when the block ends, however it ends."""
    running = [d for d in doms if d.state()[0] == libvirt.VIR_DOMAIN_RUNNING]
    _write(cluster, virt, running)
    paused = []
    with commands.undone_if_stopped(lambda: resume(cluster, virt)):
        try:
            for dom in running:
                dom.suspend()
                paused.append(dom)
            yield paused
        finally:
            resume(cluster, virt)


def resume(cluster: Cluster, virt: Libvirt) -> list[str]:
    """Resume each node the record names that is still as the dump left it; the names resumed.
    The record goes once nothing in it is left to resume; a resume libvirt refused stays in it."""
    left, resumed = [], []
    for entry in _read(cluster):
        outcome = _put_back(virt, entry)
        if outcome == "resumed":
            resumed.append(entry["name"])
        elif outcome == "refused":
            left.append(entry)
    if left:
        record_file(cluster).write_text(json.dumps(left) + "\n")
    else:
        record_file(cluster).unlink(missing_ok=True)
    return resumed


def _put_back(virt: Libvirt, entry: dict) -> str:
    try:
        dom = virt.domain(entry["name"])
        if dom is None or dom.ID() != entry["id"]:
            return "not ours"  # undefined, or off, or started again since
        if entry["run"] is not None and virt.run_of(dom) != entry["run"]:
            return "not ours"  # libvirtd restarted, and its ids with it
        state, reason = dom.state()
        if state != libvirt.VIR_DOMAIN_PAUSED or reason not in AS_DALI_LEFT_IT:
            return "not ours"
        dom.resume()
    except DaliError:
        return "not ours"  # a domain of someone else's now has the name
    except libvirt.libvirtError as e:
        log(f"{entry['name']}: left paused by a doit dump or snapshot, and libvirt would not resume it "
            f"({e.get_error_message()}): the next doit tries again")
        return "refused"
    return "resumed"


def resume_left_paused(cluster: Cluster, virt: Libvirt) -> None:
    """The nodes a killed `doit dump` or `doit snapshot` left paused, resumed, unless another doit changes the
    cluster now (perhaps that dump, alive: it resumes its own)."""
    if not record_file(cluster).exists():
        return
    with lock.held_unless_busy(cluster.lock_file) as ours:
        if not ours:
            return
        resumed = resume(cluster, virt)
    if resumed:
        log(f"resumed {', '.join(resumed)}: a doit dump or snapshot was stopped before it could "
            f"({record_file(cluster)} said so)")
