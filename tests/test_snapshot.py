"""doit snapshot, rollback, delete and the listing (dali/snapshot.py, dali/snapshot_store.py)
without a guest: the cluster's files are real files of this machine (LocalDir), its libvirt a fake
whose domains live in a file (so a process killed in the middle leaves them for the next one,
as libvirtd would), each domain's "memory" a string that its memory file carries.

Then the refusals, each before anything changes; and a snapshot and a rollback SIGKILLed at every
step (each journal write, each libvirt call, each file dali makes, and inside the making of one),
after which the next doit's convergence leaves exactly what an uninterrupted run leaves.
The same on real guests, and what only they can show: tests/test_snapshots.py."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading

import libvirt
import pytest

from dali import lifecycle, marks, pauses, settings, snapshot, snapshot_store
from dali.errors import DaliError
from dali.preflight import make_state_dir
from dali.storage.local import LocalDir
from dali.virt import memory_file_domain

MiB = 1 << 20
RUNNING, PAUSED, SHUTOFF = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTOFF
NAMES = {"running": RUNNING, "paused": PAUSED, "shutoff": SHUTOFF}


class Killed(Exception):
    pass


class FakeDom:
    def __init__(self, virt: "FakeLibvirt", name: str):
        self.virt, self._name = virt, name

    def _me(self) -> dict:
        return self.virt.load()["doms"][self._name]

    def name(self) -> str:
        return self._name

    def ID(self) -> int:
        return self._me()["id"]

    def state(self):
        me = self._me()
        return [NAMES[me["state"]], me["reason"]]

    def isActive(self) -> int:
        return int(self._me()["state"] != "shutoff")

    def _set(self, **values) -> None:
        self.virt.tick()
        with self.virt.lock:
            state = self.virt.load()
            state["doms"][self._name].update(values)
            self.virt.store(state)
        self.virt.tick()

    def suspend(self) -> None:
        assert self._me()["state"] == "running"
        self._set(state="paused", reason=libvirt.VIR_DOMAIN_PAUSED_USER)

    def resume(self) -> None:
        assert self._me()["state"] == "paused"
        self._set(state="running", reason=1)

    def destroy(self) -> None:
        assert self._me()["state"] != "shutoff"
        self._set(state="shutoff", reason=0, id=-1, run=None)


class FakeLibvirt:
    """What dali/snapshot.py, dali/pauses.py and LocalDir.save_memory ask of libvirt."""

    def __init__(self, path, names):
        self.path, self.lock, self.count, self.kill_at = path, threading.RLock(), 0, None
        if not path.exists():
            self.store({"next": 1, "doms": {n: {"state": "shutoff", "reason": 0, "id": -1, "run": None,
                                                  "memory": "", "definition": f"def-{n}", "extra": [],
                                                  "clock": 0} for n in names}})

    def load(self) -> dict:
        with self.lock:
            return json.loads(self.path.read_text())

    def store(self, state: dict) -> None:
        with self.lock:
            new = self.path.with_name(self.path.name + ".new")
            new.write_text(json.dumps(state))
            new.replace(self.path)

    def tick(self) -> None:
        """A point where a kill may land (counted in the child process that is killed)."""
        with self.lock:
            self.count += 1
            if self.kill_at is not None and self.count == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    # as a test sets the scene
    def boot(self, name: str, memory: str) -> None:
        with self.lock:
            state = self.load()
            n = state["next"]
            state["next"] += 1
            state["doms"][name].update(state="running", reason=1, id=n, run=f"run-{n}", memory=memory)
            self.store(state)

    def poke(self, name: str, **values) -> None:
        state = self.load()
        state["doms"][name].update(values)
        self.store(state)

    # the adapter's calls
    def domain(self, name: str):
        return FakeDom(self, name) if name in self.load()["doms"] else None

    def run_of(self, dom):
        return self.load()["doms"][dom.name()]["run"]

    def definition(self, dom) -> str:
        return self.load()["doms"][dom.name()]["definition"]

    def live_only_disks(self, dom) -> list[str]:
        return self.load()["doms"][dom.name()]["extra"]

    def save_memory(self, dom, path) -> None:
        me = self.load()["doms"][dom.name()]
        assert me["state"] == "paused", "saved only while paused"
        self.tick()
        xml = f"<domain><name>{dom.name()}</name></domain>".encode() + b"\0"
        words = [2, len(xml), 1, 0, 0] + [0] * 14  # 19 words: the XML at byte 92, as libvirt 9.0 writes it
        with open(path, "wb") as f:  # O_TRUNC into the file dali made, as libvirt's save
            f.write(b"LibvirtQemudSave" + b"".join(w.to_bytes(4, sys.byteorder) for w in words) + xml
                    + me["memory"].encode())
        self.tick()

    def restore_paused(self, path) -> None:
        name = memory_file_domain(path)
        data = path.read_bytes()
        memory = data[data.index(b"</domain>\0") + 10:].decode()
        self.tick()
        with self.lock:
            state = self.load()
            assert state["doms"][name]["state"] == "shutoff", "libvirt restores only a domain that is off"
            n = state["next"]
            state["next"] += 1
            state["doms"][name].update(state="paused", reason=libvirt.VIR_DOMAIN_PAUSED_USER, id=n,
                                       run=f"run-{n}", memory=memory)
            self.store(state)
        self.tick()

    def set_clock(self, dom, wait=5) -> None:
        if self.load()["doms"][dom.name()].get("silent"):
            raise libvirt.libvirtError("guest agent is not responding")
        self.poke(dom.name(), clock=1)


@pytest.fixture
def cluster(data_dir, tmp_path):
    """Three nodes, a and b running, c shut off; a FAM of 8 MiB and a disk each (plain files)."""
    cfg = settings.load(env={"DALI_DIR": str(data_dir), "DALI_TAG": "snaptest"}, repo=tmp_path)
    cfg = cfg._replace(fam_size=8 * MiB)
    make_state_dir(cfg)
    virt = FakeLibvirt(tmp_path / "libvirt.json", [n.name for n in cfg.nodes])
    files = LocalDir(cfg, virt)
    files.prepare()
    files.allocate(cfg.fam_path, cfg.fam_size, for_qemu=True)
    files.write(cfg.fam_path, {0: b"fam-at-first", 4 * MiB: b"o2hb heartbeat 1"})
    for n in cfg.nodes:
        files.put(cfg.disk(n), f"disk of {n.name} at first".encode() * 1000)
    virt.boot("snaptesta", "memory of a at first")
    virt.boot("snaptestb", "memory of b at first")
    return cfg, files, virt


def world(cfg, files, virt) -> dict:
    """Everything a snapshot and a rollback are about, as plain values."""
    doms = virt.load()["doms"]
    return {"fam": cfg.fam_path.read_bytes(),
            "disks": {n.name: cfg.disk(n).read_bytes() for n in cfg.nodes if cfg.disk(n).exists()},
            "nodes": {n: (d["state"], d["memory"] if d["state"] != "shutoff" else None) for n, d in doms.items()}}


def later(cfg, files, virt) -> None:
    """The cluster goes on after a snapshot: the FAM, the disks and the memories change, a node
    goes off and one comes up."""
    files.write(cfg.fam_path, {0: b"fam-afterwards", 6 * MiB: b"written after"})
    for n in cfg.nodes:
        files.put(cfg.disk(n), f"disk of {n.name} afterwards".encode() * 999)
    virt.poke("snaptesta", memory="memory of a afterwards")
    if FakeDom(virt, "snaptestb").isActive():
        FakeDom(virt, "snaptestb").destroy()
    if not FakeDom(virt, "snaptestc").isActive():
        virt.boot("snaptestc", "memory of c afterwards")


def leftovers(cfg, files) -> list:
    found = [p for p in (snapshot.journal_file(cfg), pauses.record_file(cfg)) if p.exists()]
    found += [p for p in files.folders(files.snapshots_dir) if not snapshot_store.is_whole(files, p)]
    found += list(cfg.data_dir.glob(".*.new")) + list(files.snapshots_dir.glob("*/.*.new"))
    return found


# --- taking, listing, rolling back, deleting -------------------------------------------------------

def test_a_snapshot_and_a_rollback_put_everything_back(cluster):
    cfg, files, virt = cluster
    before = world(cfg, files, virt)
    snap = snapshot.take(cfg, files, virt, "formed")
    assert world(cfg, files, virt) == before, "taking one changes nothing: the nodes paused, then resumed"
    assert snap.running == ["snaptesta", "snaptestb"] and set(snap.nodes) == {"snaptesta", "snaptestb", "snaptestc"}
    assert {p.name for p in snap.path.iterdir()} == {"snapshot.json", "FAM", "snaptesta.qcow2", "snaptestb.qcow2",
                                                     "snaptestc.qcow2", "snaptesta.memory", "snaptestb.memory"}
    assert all(files.is_ours(p) for p in [snap.path, *snap.path.iterdir()]), "only what dali made"
    assert virt.load()["doms"]["snaptesta"]["clock"] == 1, "the wall clock set after the pause"
    assert files.allocated(snap.path / "FAM") < cfg.fam_size, "the FAM's holes kept"
    later(cfg, files, virt)
    assert world(cfg, files, virt) != before
    snapshot.rollback(cfg, files, virt, "formed")
    assert world(cfg, files, virt) == before
    assert leftovers(cfg, files) == []
    assert files.qemu_may_use(cfg.fam_path) and files.allocated(cfg.fam_path) >= cfg.fam_size
    assert all(files.is_ours(cfg.disk(n)) for n in cfg.nodes)
    assert snapshot_store.read(cfg, files, "formed").meta == snap.meta, "a rollback leaves the snapshot as it was"
    snapshot.rollback(cfg, files, virt, "formed")  # and again, from the same point
    assert world(cfg, files, virt) == before


def test_a_shut_off_cluster_is_its_disks_and_fam(cluster):
    cfg, files, virt = cluster
    for name in ("snaptesta", "snaptestb"):
        FakeDom(virt, name).destroy()
    before = world(cfg, files, virt)
    snap = snapshot.take(cfg, files, virt, "cold")
    assert snap.running == [] and not list(snap.path.glob("*.memory"))
    later(cfg, files, virt)
    snapshot.rollback(cfg, files, virt, "cold")
    assert world(cfg, files, virt) == before, "every node off again, c included"


def test_the_listing_says_what_is_kept_and_what_a_stopped_doit_left(cluster):
    cfg, files, virt = cluster
    assert "no snapshot of cluster snaptest" in snapshot_store.listing(cfg, files)
    snapshot.take(cfg, files, virt, "formed")
    files.make_folder(files.snapshots_dir / "halfway")  # as a killed take leaves it
    text = snapshot_store.listing(cfg, files)
    head, row, left = text.splitlines()
    assert head.split() == ["snapshot", "taken", "running", "shut", "off", "on", "disk", "as", "files"]
    assert row.startswith("formed ") and "snaptesta snaptestb" in row and "snaptestc" in row and "MiB" in row
    assert "halfway" in left and "the next doit that changes the cluster removes it" in left


def test_delete_and_clean(cluster, capfd):
    cfg, files, virt = cluster
    snapshot.take(cfg, files, virt, "one")
    snapshot.take(cfg, files, virt, "two")
    snapshot_store.delete(cfg, files, "one")
    assert [s.name for s in snapshot_store.kept(cfg, files)[0]] == ["two"]
    assert snapshot_store.kept(cfg, files)[1:] == ([], [])
    with pytest.raises(DaliError, match="no snapshot one of cluster snaptest"):
        snapshot_store.delete(cfg, files, "one")
    mine = files.snapshots_dir / "two" / "notes.txt"
    mine.write_text("a user's")
    from dali import cleaning
    cleaning._collected, cleaning._kept[:] = [], []
    snapshot_store.remove_all(cfg, files, dryrun=True)
    assert cleaning._collected == [] and any("notes.txt" in k for k in cleaning._kept), \
        "a snapshot holding a user's file is kept, and said so"
    mine.unlink()
    cleaning._collected, cleaning._kept[:] = [], []
    snapshot_store.remove_all(cfg, files, dryrun=True)
    assert cleaning._collected == [("snapshot", str(files.snapshots_dir / "two")),
                                   ("directory", str(files.snapshots_dir))]
    cleaning._collected = None
    assert (files.snapshots_dir / "two" / "snapshot.json").exists(), "-n removes nothing"
    snapshot_store.remove_all(cfg, files)
    assert not files.snapshots_dir.exists()
    out = capfd.readouterr().err
    assert f"removed snapshot {files.snapshots_dir / 'two'}" in out and f"removed directory {files.snapshots_dir}" in out


# --- refusals, each before anything changes ---------------------------------------------------------

@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "../up", "a b", "é", "x" * 65, "a\nb"])
def test_a_name_is_letters_digits_dot_underscore_dash(cluster, name):
    cfg, files, virt = cluster
    with pytest.raises(DaliError, match="cannot name a snapshot"):
        snapshot.take(cfg, files, virt, name)
    assert not files.snapshots_dir.exists()


def refused(cfg, files, virt, call, match: str) -> None:
    before = world(cfg, files, virt), snapshot_store.kept(cfg, files)
    with pytest.raises(DaliError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
    assert (world(cfg, files, virt), snapshot_store.kept(cfg, files)) == before, "refused before anything changed"
    assert leftovers(cfg, files) == []


def test_taking_one_is_refused_before_anything_is_made(cluster):
    cfg, files, virt = cluster
    snapshot.take(cfg, files, virt, "formed")
    refused(cfg, files, virt, lambda: snapshot.take(cfg, files, virt, "formed"), "snapshot formed exists")
    virt.poke("snaptestb", state="paused", reason=libvirt.VIR_DOMAIN_PAUSED_USER)
    refused(cfg, files, virt, lambda: snapshot.take(cfg, files, virt, "x"), "snaptestb is paused")
    virt.poke("snaptestb", state="running", reason=1, extra=["vdz"])
    refused(cfg, files, virt, lambda: snapshot.take(cfg, files, virt, "x"), "disk vdz attached beyond its definition")
    virt.poke("snaptestb", extra=[])
    shared = cfg._replace(shares=(("/srv/x", "/x"),))
    refused(shared, files, virt, lambda: snapshot.take(shared, files, virt, "x"), r"\[\[share\]\]")
    checked = cfg._replace(coherence="strict")
    refused(checked, files, virt, lambda: snapshot.take(checked, files, virt, "x"), "device.coherence")
    greedy = cfg._replace(memory=1 << 60)
    refused(greedy, files, virt, lambda: snapshot.take(greedy, files, virt, "x"), "free some")


def test_rolling_back_is_refused_before_anything_changes(cluster, tmp_path):
    cfg, files, virt = cluster
    snapshot.take(cfg, files, virt, "formed")
    later(cfg, files, virt)
    back = lambda c=cfg: snapshot.rollback(c, files, virt, "formed")
    refused(cfg, files, virt, lambda: snapshot.rollback(cfg, files, virt, "nosuch"), "no snapshot nosuch")
    virt.poke("snaptestb", definition="def-snaptestb, with more memory")
    refused(cfg, files, virt, back, "snaptestb's definition changed since snapshot formed")
    virt.poke("snaptestb", definition="def-snaptestb")
    fewer = cfg._replace(clones=("b",))
    refused(fewer, files, virt, lambda: back(fewer), "removed snaptestc")
    more = cfg._replace(clones=("b", "c", "d"))
    refused(more, files, virt, lambda: back(more), "added snaptestd")
    bigger = cfg._replace(fam_size=16 * MiB)
    os.truncate(cfg.fam_path, 16 * MiB)
    refused(bigger, files, virt, lambda: back(bigger), "never resizes the FAM")
    os.truncate(cfg.fam_path, 8 * MiB)
    memory = files.snapshots_dir / "formed" / "snaptesta.memory"
    whole = memory.read_bytes()
    with open(memory, "r+b") as f:
        f.write(b"LibvirtQemudPart")
    refused(cfg, files, virt, back, "not a whole save of it")
    memory.write_bytes(whole)
    meta = files.snapshots_dir / "formed" / "snapshot.json"
    data = json.loads(meta.read_text())
    files.put(meta, json.dumps({**data, "cluster": "another"}).encode())
    refused(cfg, files, virt, back, "taken of another cluster")
    files.put(meta, json.dumps({**data, "nodes": {**data["nodes"], "snaptesta": {
        **data["nodes"]["snaptesta"], "backing": str(cfg.frozen_disk)}}}).encode())
    refused(cfg, files, virt, back, "built on .*frozen.qcow2.*which is gone")
    files.put(meta, json.dumps(data).encode())
    back()  # all put right: it goes


def test_a_pool_refuses_in_one_line(cluster):
    cfg, files, virt = cluster

    class Remote(LocalDir):
        def snapshot_problem(self):
            return "kept in a storage pool: no"
    remote = Remote(cfg, virt)
    for call in (lambda: snapshot.take(cfg, remote, virt, "x"), lambda: snapshot.rollback(cfg, remote, virt, "x"),
                 lambda: snapshot_store.delete(cfg, remote, "x"), lambda: snapshot_store.listing(cfg, remote)):
        with pytest.raises(DaliError, match="storage pool"):
            call()
    snapshot.converge(cfg, remote, virt)  # nothing to do, and no error: every command asks it


# --- killed at every step: the next doit converges ------------------------------------------------

def killed_at(step: int, fn, virt) -> bool:
    """fn() in a child process SIGKILLed at its `step`-th point (a journal write, a libvirt call,
    a file dali makes, the middle of making one); True if it was killed, False if it finished."""
    pid = os.fork()
    if pid == 0:  # the child: every point counted, the kill where asked
        try:
            virt.count, virt.kill_at = 0, step
            for name in ("clone_file", "copy_into", "save_memory", "put", "make_folder", "remove_folder", "discard"):
                made = getattr(LocalDir, name)

                def counted(self, *args, _made=made, **kwargs):
                    virt.tick()
                    result = _made(self, *args, **kwargs)
                    virt.tick()
                    return result
                setattr(LocalDir, name, counted)
            private = marks.make_file_private  # inside the making of a file, before its rename

            def in_the_middle(*args, **kwargs):
                virt.tick()
                return private(*args, **kwargs)
            marks.make_file_private = in_the_middle
            written = snapshot._write_journal

            def journal(*args, **kwargs):
                written(*args, **kwargs)
                virt.tick()
            snapshot._write_journal = journal
            fn()
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the run failed instead of being killed"
    return False


def test_a_rollback_killed_at_any_step_is_finished_by_the_next_doit(cluster):
    cfg, files, virt = cluster
    want = world(cfg, files, virt)
    snapshot.take(cfg, files, virt, "formed")
    step = 0
    while True:
        step += 1
        later(cfg, files, virt)
        if not killed_at(step, lambda: snapshot.rollback(cfg, files, virt, "formed"), virt):
            break
        snapshot.converge(cfg, files, virt)  # what the next doit does first
        assert world(cfg, files, virt) == want, f"killed at step {step}"
        assert leftovers(cfg, files) == [], f"killed at step {step}"
        # The nodes each doit command meets are the same, whichever asks first (doit status):
        assert [d.name() for _, d in lifecycle.domains(cfg, virt, list(cfg.nodes))] == [n.name for n in cfg.nodes]
    assert step > 15, "every step counted"
    assert world(cfg, files, virt) == want


def test_a_snapshot_killed_at_any_step_is_whole_or_gone_and_no_node_stays_paused(cluster):
    cfg, files, virt = cluster
    want = world(cfg, files, virt)
    step, outcomes = 0, set()
    while True:
        step += 1
        if not killed_at(step, lambda: snapshot.take(cfg, files, virt, "formed"), virt):
            break
        snapshot.converge(cfg, files, virt)
        assert world(cfg, files, virt) == want, f"killed at step {step}: every node as it was, none paused"
        assert leftovers(cfg, files) == [], f"killed at step {step}"
        snap = snapshot_store.read(cfg, files, "formed")
        outcomes.add(snap is not None)
        if snap is not None:  # killed after it was whole: it is a snapshot like any other
            later(cfg, files, virt)
            snapshot.rollback(cfg, files, virt, "formed")
            assert world(cfg, files, virt) == want
            snapshot_store.delete(cfg, files, "formed")
    assert step > 10 and outcomes == {False, True}
    assert snapshot_store.read(cfg, files, "formed") is not None


def test_a_delete_killed_halfway_is_finished_by_the_next_doit(cluster):
    cfg, files, virt = cluster
    snapshot.take(cfg, files, virt, "formed")
    step = 0
    while True:
        step += 1
        if not killed_at(step, lambda: snapshot_store.delete(cfg, files, "formed"), virt):
            break
        snapshot.converge(cfg, files, virt)
        snap = snapshot_store.read(cfg, files, "formed")
        if snap is None:  # its snapshot.json went first: the rest went with the next doit
            assert not files.snapshots_dir.joinpath("formed").exists(), f"killed at step {step}"
            snapshot.take(cfg, files, virt, "formed")
        else:  # killed before it began: the snapshot whole
            assert all(p.exists() for p in snap.files()), f"killed at step {step}"
    assert step > 3 and not files.snapshots_dir.joinpath("formed").exists()


def test_a_stopped_rollback_whose_snapshot_is_gone_leaves_every_node_off(cluster, capfd):
    cfg, files, virt = cluster
    snapshot.take(cfg, files, virt, "formed")
    later(cfg, files, virt)
    step = 0
    while True:  # killed once it has restored a node
        step += 1
        assert killed_at(step, lambda: snapshot.rollback(cfg, files, virt, "formed"), virt)
        if json.loads(snapshot.journal_file(cfg).read_text())["restored"]:
            break
        snapshot.converge(cfg, files, virt)
        later(cfg, files, virt)
    snapshot_store.delete(cfg, files, "formed")
    snapshot.converge(cfg, files, virt)
    assert {n: d["state"] for n, d in virt.load()["doms"].items()} == dict.fromkeys(virt.load()["doms"], "shutoff")
    assert not snapshot.pending(cfg)
    assert "and formed is gone: every node it touched is off" in capfd.readouterr().err


def test_a_build_waits_for_a_stopped_rollback_before_it_reads_the_fam(cluster):
    """The FAM's task is not up to date while a rollback is pending: doit finishes the rollback
    before original:boot could read a FAM half put back and boot the original to remake it."""
    from tasks import fam as fam_task
    cfg, files, virt = cluster
    snapshot.take(cfg, files, virt, "formed")
    later(cfg, files, virt)
    files.let_qemu_use(cfg.fam_path)
    assert fam_task.is_ready(cfg, files)
    killed_at(8, lambda: snapshot.rollback(cfg, files, virt, "formed"), virt)
    assert snapshot.pending(cfg) and not fam_task.is_ready(cfg, files)
    snapshot.converge(cfg, files, virt)
    assert fam_task.is_ready(cfg, files)


def test_a_silent_agent_leaves_its_clock_and_says_so(cluster, capfd):
    cfg, files, virt = cluster
    virt.poke("snaptestb", silent=True)
    snapshot.take(cfg, files, virt, "formed")
    assert "clock not set on snaptestb (guest agent is not responding)" in capfd.readouterr().err


def test_a_save_libvirt_refuses_leaves_no_snapshot_and_every_node_running(cluster, monkeypatch):
    cfg, files, virt = cluster
    before = world(cfg, files, virt)

    def refuses(dom, path):
        raise libvirt.libvirtError("migration is not supported with this device")
    monkeypatch.setattr(virt, "save_memory", refuses)
    with pytest.raises(libvirt.libvirtError):
        snapshot.take(cfg, files, virt, "formed")
    assert world(cfg, files, virt) == before and leftovers(cfg, files) == []
    assert files.folders(files.snapshots_dir) == []


# --- the verbs ------------------------------------------------------------------------------------

def test_the_verbs_read_their_words():
    from dali.verbs import VERBS
    assert vars(VERBS["snapshot"].parse(["formed"])) == {"name": "formed", "delete": False}
    assert vars(VERBS["snapshot"].parse(["--delete", "formed"])) == {"name": "formed", "delete": True}
    assert vars(VERBS["snapshot"].parse(["formed", "--delete"])) == {"name": "formed", "delete": True}
    assert vars(VERBS["rollback"].parse(["formed"])) == {"name": "formed"}
    assert VERBS["torture"].parse(["append", "--from", "formed", "--count", "3"]).from_snapshot == "formed"
    assert VERBS["torture"].parse(["append"]).from_snapshot is None
    for verb, words, said in [
            ("snapshot", [], "takes one name"), ("snapshot", ["a", "b"], "takes one name"),
            ("snapshot", ["--delete"], "takes one name"), ("snapshot", ["../x"], "cannot name a snapshot"),
            ("snapshot", ["-x"], "no such option"), ("rollback", [], "takes one snapshot's name"),
            ("rollback", [".x"], "cannot name a snapshot"), ("torture", ["--from", "a b"], "cannot name")]:
        with pytest.raises(DaliError, match=said):
            VERBS[verb].parse(words)
    assert "doit snapshot NAME | doit snapshot --delete NAME" in VERBS["snapshot"].parser().format_help()


def test_doit_lists_and_cleans_snapshots(data_dir, tmp_path):
    """Through the real doit, on a cluster of libvirt's in-memory test driver with its files here
    and every node off (a snapshot made beforehand through the library): `doit snapshots` lists it,
    `doit clean -n` names it and removes nothing, `doit clean` removes it with the rest. (The
    commands doit snapshot and doit rollback need the checkout installed: scripts/setup.)"""
    from support.cluster import unique_tag
    from support.doit import run_doit
    tag = unique_tag("snapverb")
    path = tmp_path / "cluster.toml"
    path.write_text(f'uri = "test:///default"\ntag = "{tag}"\ndir = "{data_dir}"\n[fam]\nsize = "32M"\n')
    cfg = settings.load(path, env={})  # as doit loads it: its state in the checkout's state/
    try:
        make_state_dir(cfg)
        virt = FakeLibvirt(tmp_path / "libvirt.json", [n.name for n in cfg.nodes])
        files = LocalDir(cfg, virt)
        files.prepare()
        files.allocate(cfg.fam_path, cfg.fam_size, for_qemu=True)
        for n in cfg.nodes:
            files.put(cfg.disk(n), b"disk")
        snapshot.take(cfg, files, virt, "cold")
        listed = run_doit("snapshots", f"config={path}")
        assert listed.returncode == 0 and re.search(rf"^cold .* - +{tag}a {tag}b {tag}c ", listed.stdout, re.M), listed.stdout
        dry = run_doit("clean", "-n", f"config={path}")
        assert f"would remove snapshot {files.snapshots_dir / 'cold'}\n" in dry.stdout, dry.stdout
        assert dry.stdout.index("would remove snapshot") < dry.stdout.index(f"would remove file {cfg.fam_path}")
        assert (files.snapshots_dir / "cold" / "snapshot.json").exists()
        gone = run_doit("clean", f"config={path}")
        assert gone.returncode == 0 and f"removed snapshot {files.snapshots_dir / 'cold'}" in gone.stdout + gone.stderr
        assert not data_dir.exists()
    finally:
        import shutil
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
        for leftover in (cfg.dep_file, cfg.lock_file):
            leftover.unlink(missing_ok=True)
