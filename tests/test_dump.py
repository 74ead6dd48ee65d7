"""`doit dump` never leaves a node paused: stopped by Ctrl-C, SIGTERM or SIGHUP it resumes the
nodes it paused before it exits; killed by SIGKILL, the next doit that uses the nodes resumes
them from the record the dump wrote before its first pause, as long as each is the same run
of its domain, still paused as the dump left it; a doit beside a dump that still runs leaves
them to it. And two dumps in the same second each get a directory.

On libvirt's test driver served by this machine's libvirtd (test+unix:///default), where every
process sees the same domains, so that a real `doit dump` pauses them and the next `doit`
finds them so (the in-process test:///default is one process's own). Its domains run no guest,
and it dumps no memory: a dump held before its first node's memory (tests/support/held_doit.py)
is stopped there. The real dump of booted nodes is test_cluster_living.py's.
"""

from __future__ import annotations

import json
import signal
import shutil
import subprocess
import time
import types

import libvirt
import pytest

from dali import domain, evidence, lifecycle, pauses, settings
from dali.virt import Libvirt
from support.cluster import unique_tag
from support.doit import start_doit
from support.files import local_files
from test_marks import for_test_driver

pytestmark = pytest.mark.libvirt

URI = "test+unix:///default"
RUNNING, PAUSED = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED
HELD_IN_THE_DUMP = ("--before", "dali.storage.local:LocalDir.dump_memory")


@pytest.fixture
def nodes(tmp_path):
    """A cluster of three nodes a, b, c defined in the test driver, a and b running, c off."""
    tag = unique_tag("dump")
    path = tmp_path / "cluster.toml"
    path.write_text(f'uri = "{URI}"\ntag = "{tag}"\ndir = "{tmp_path / "data"}"\n')
    cfg = settings.load(path, env={})
    conn = libvirt.open(URI)  # held open: the test driver keeps its domains while a connection does
    doms = {n.suffix: conn.defineXML(for_test_driver(domain.domain_xml(cfg, local_files(cfg), n, "test")))
            for n in cfg.nodes}
    doms["a"].create()
    doms["b"].create()
    yield types.SimpleNamespace(path=path, cfg=cfg, conn=conn, tag=tag)
    for dom in conn.listAllDomains():
        if dom.name().startswith(tag):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()
    shutil.rmtree(cfg.state_dir, ignore_errors=True)
    for leftover in (cfg.dep_file, cfg.lock_file):
        leftover.unlink(missing_ok=True)


def states(c) -> dict[str, tuple[int, int]]:
    """Each node's libvirt state and domain id, as `virsh list --all` shows them."""
    return {s: (c.conn.lookupByName(c.tag + s).state()[0], c.conn.lookupByName(c.tag + s).ID()) for s in "abc"}


def held_dump(c, *words: str) -> subprocess.Popen:
    """`doit dump WORDS`, held once it has paused the nodes, before it dumps the first."""
    run = start_doit("dump", *words, f"config={c.path}", hold=HELD_IN_THE_DUMP,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    said = [run.stderr.readline() for _ in range(2)]
    assert said[0].startswith("paused ") and said[1].startswith("held at"), said
    return run


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_dump_stopped_by_a_signal_resumes_the_nodes_it_paused(nodes, sig, status):
    nodes.conn.lookupByName(nodes.tag + "b").suspend()  # paused by the user before the dump
    before = states(nodes)
    run = held_dump(nodes)
    assert states(nodes)["a"][0] == PAUSED
    run.send_signal(sig)
    out, err = run.communicate(timeout=60)
    assert run.returncode == status and "Traceback" not in out + err, out + err
    assert [line for line in err.splitlines() if line.startswith("dali: ")] == \
        [line for line in err.splitlines() if line.startswith("dali: stopped by ")] != []
    assert states(nodes) == before, "a running again, the same run; b paused as the user left it"
    assert not pauses.record_file(nodes.cfg).exists()


@pytest.mark.parametrize("command", [["status"], ["pssh", "true"], ["dump"]], ids=" ".join)
def test_a_killed_dump_is_resumed_by_the_next_doit(nodes, command):
    """SIGKILLed with a and b paused: the record names them. Then b is started again by the user
    and paused (another run) and c started and paused (never the dump's): the next doit resumes
    a alone, first thing."""
    run = held_dump(nodes)
    run.kill()
    run.wait()
    assert [s for s, (state, _) in states(nodes).items() if state == PAUSED] == ["a", "b"]
    assert [e["name"] for e in json.loads(pauses.record_file(nodes.cfg).read_text())] == \
        [nodes.tag + "a", nodes.tag + "b"]
    b, c = nodes.conn.lookupByName(nodes.tag + "b"), nodes.conn.lookupByName(nodes.tag + "c")
    b.destroy()
    for dom in (b, c):
        dom.create()
        dom.suspend()
    ids = {s: i for s, (_, i) in states(nodes).items()}
    after = start_doit(*command, f"config={nodes.path}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = after.communicate(timeout=60)
    assert "Traceback" not in out + err, out + err
    assert f"resumed {nodes.tag}a: a doit dump or snapshot was stopped before it could" in err
    assert states(nodes) == {"a": (RUNNING, ids["a"]), "b": (PAUSED, ids["b"]), "c": (PAUSED, ids["c"])}
    assert not pauses.record_file(nodes.cfg).exists()


def test_a_doit_beside_a_dump_that_runs_leaves_its_nodes_to_it(nodes):
    run = held_dump(nodes)
    beside = start_doit("status", f"config={nodes.path}", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = beside.communicate(timeout=60)
    assert beside.returncode == 0 and "resumed" not in err, out + err
    assert states(nodes)["a"][0] == states(nodes)["b"][0] == PAUSED, "still the dump's"
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=60)
    assert states(nodes)["a"][0] == states(nodes)["b"][0] == RUNNING


class Memory:
    """Storage that 'dumps' a node's memory as a line naming it."""

    def dump_memory(self, dom, path):
        path.write_text(f"memory of {dom.name()}\n")


@pytest.fixture
def in_process(config_in):
    """config_in's three nodes on this process's own test driver (test:///default), a and b running."""
    virt = Libvirt("test:///default", config_in.id)
    doms = [(n, virt.conn.defineXML(for_test_driver(domain.domain_xml(config_in, local_files(config_in), n, "test"))))
            for n in config_in.nodes]
    for _, dom in doms[:2]:
        dom.create()
    yield virt, doms
    for _, dom in doms:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_two_dumps_in_the_same_second_each_get_their_own_directory(config_in, in_process, monkeypatch):
    virt, doms = in_process
    one_second = time.localtime()
    monkeypatch.setattr(evidence, "time", types.SimpleNamespace(
        strftime=lambda form: time.strftime(form, one_second), monotonic=time.monotonic))
    first = evidence.dump_all(config_in, Memory(), virt, doms)
    second = evidence.dump_all(config_in, Memory(), virt, doms)
    assert first != second and first.parent == second.parent
    for where in (first, second):
        assert sorted(p.name for p in where.iterdir()) == ["README", f"{doms[0][0].name}.kdump",
                                                           f"{doms[1][0].name}.kdump"]
    assert [d.state()[0] for _, d in doms] == [RUNNING, RUNNING, libvirt.VIR_DOMAIN_SHUTOFF]


def test_a_node_is_resumed_only_in_the_run_the_dump_paused(config_in, in_process, monkeypatch):
    """The record names a run (virt.run_of) as well as libvirt's id: after libvirtd restarts, a
    new run may get the old id."""
    virt, doms = in_process
    (_, a), (_, b) = doms[:2]
    runs = {a.name(): "run 1", b.name(): "run 1"}
    monkeypatch.setattr(type(virt), "run_of", lambda self, dom: runs[dom.name()])
    killed = pauses.paused_together(config_in, virt, [a, b])
    killed.__enter__()  # and never left, as a SIGKILL leaves it: both paused, the record written
    try:
        runs[b.name()] = "run 2"  # the same id, another run of b
        lifecycle.domains(config_in, virt, config_in.nodes)
        assert [a.state()[0], b.state()[0]] == [RUNNING, PAUSED]
        assert not pauses.record_file(config_in).exists()
    finally:
        killed.__exit__(None, None, None)
