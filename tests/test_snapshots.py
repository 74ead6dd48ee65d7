"""Snapshots of a running OCFS2 cluster on qemu:///system with real guests (#30, docs/snapshots.md):
what only booted nodes can show. libvirt saves each paused node's memory (its memory-only
external snapshot) and restores it paused; after `doit rollback` the filesystem is mounted on
every node, `doit verify` and a torture run pass, what was written after the snapshot is gone
on every node, the guests' clocks are the host's, and OCFS2 saw no node die across the jumps;
`doit torture --from` starts each run there; a snapshot and a rollback SIGKILLed in the middle
converge on the next doit; a shut-off snapshot; `doit clean -n` names them.

On conftest.ocfs2_cluster, before test_torture.py (tests/support/schedule.py), which finds it
running, rolled back. The tests follow each other: the first takes the snapshot the others use. The host-only
half (every refusal, a kill at every step on a fake libvirt, the copies) is test_snapshot.py's
and test_snapshot_files.py's.

The commands `doit snapshot`, `doit snapshots` and `doit rollback` are doit plugins registered
in pyproject.toml: the checkout must be installed (scripts/setup) for doit to know them."""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import time

import libvirt
import pytest

from dali import pauses, snapshot
from support.cluster import torture_runs as runs
from support.doit import one_error_line, start_doit

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

# What a node's kernel says when OCFS2 loses a peer: its network link (o2net), its disk
# heartbeat (o2hb), a recovery of the dead node's journal.
LOST_A_PEER = r"No longer connected to node|o2hb.*(dead|timed out)|Node \d+ \(.*\) is dead|Beginning recovery|fence"
# How many such lines each node's kernel had logged when the snapshot was taken: a rollback
# puts the logs back there, so any line since is news.
PEERS_LOST_AT_SNAPSHOT: dict[str, int] = {}


@pytest.fixture(scope="module")
def cluster(ocfs2_cluster):
    """conftest.ocfs2_cluster, running: a, b and c (test_shared_fs.py adds a node d and takes it out)."""
    c = ocfs2_cluster
    known = c.doit("help", "snapshot", check=False)
    assert known.returncode == 0 and "doit snapshot NAME" in known.stdout, \
        "doit does not know the command snapshot: install the checkout (scripts/setup)"
    c.doit()
    c.doit("start")
    yield c
    # Left running, as the last test leaves it (rolled back): test_torture.py, next on this
    # worker, needs it so, and a boot costs a minute where a rollback costs seconds.


def suffixes(c) -> str:
    return "".join(n.suffix for n in c.cfg.nodes)


def on_each(c, command: str, nodes: str | None = None) -> dict[str, str]:
    """What `command` printed on each node (pssh), by suffix; a node that failed says so."""
    nodes = nodes or suffixes(c)
    run = c.doit("pssh", "--on", ",".join(nodes), command, check=False)
    said = {}
    for s in nodes:
        # each node's output under its name, up to the next node's or pssh's closing "NODE: exit N" lines
        m = re.search(rf"^--- {c.tag}{s} \(exit (\d+)\)\n(.*?)(?=^--- |^{c.tag}\w+: exit |\Z)",
                      run.stdout, re.M | re.S)
        said[s] = m.group(2) if m and m.group(1) == "0" else f"FAILED: {m.group(0) if m else run.stdout}"
    return said


def states(c) -> dict[str, int]:
    return {n.suffix: c.dom(n.suffix).state()[0] for n in c.cfg.nodes}


def lost_peers(c) -> dict[str, int]:
    """How many lines on each node's kernel log say OCFS2 lost a peer."""
    return {s: int(out.strip() or 0) for s, out in
            on_each(c, f"dmesg | grep -cE '{LOST_A_PEER}' || true").items()}


def test_a_running_cluster_goes_back_to_its_snapshot(cluster):
    c = cluster
    for s in suffixes(c):
        c.doit("pssh", "--on", s, f"echo kept > /data/before-{s}; sync")
    took = c.doit("snapshot", "formed")
    assert re.search(r"snapshot formed: .*memory of .*taken in [\d.]+ s, the nodes paused for [\d.]+ s",
                     took.stdout + took.stderr)
    assert set(states(c).values()) == {libvirt.VIR_DOMAIN_RUNNING}, "resumed, every one"
    assert all(c.dom(s).snapshotNum() == 0 for s in suffixes(c)), "no snapshot metadata left with a domain"
    assert not pauses.record_file(c.cfg).exists()
    listed = c.doit("snapshots").stdout
    assert re.search(rf"^formed .* {c.tag}a {c.tag}b {c.tag}c", listed, re.M), listed
    PEERS_LOST_AT_SNAPSHOT.update(lost_peers(c))

    # Life goes on: a file on the shared filesystem, one on each node's own disk.
    c.doit("pssh", "--on", "a", "echo later > /data/after; sync")
    c.doit("pssh", "echo later > /root/after; sync")
    back = c.doit("rollback", "formed")
    assert "rolled back to snapshot formed" in back.stdout + back.stderr
    assert set(states(c).values()) == {libvirt.VIR_DOMAIN_RUNNING}
    assert not snapshot.pending(c.cfg)

    for s, out in on_each(c, "mountpoint -q /data && ls /data && ls /root").items():
        assert "before-a" in out and "before-b" in out, (s, out)
        assert "after" not in out, (s, out)
    clocks = on_each(c, "date +%s.%N")
    for s, out in clocks.items():
        assert abs(float(out.strip()) - time.time()) < 5, f"{s}'s clock: {out} (host {time.time()})"
    c.doit("verify")


def test_torture_from_the_snapshot_starts_each_run_there(cluster):
    """Each run rolled back first, the two summed up as a series (--count); after the last,
    OCFS2 still has every peer once its dead threshold has passed: nobody fenced anybody across
    the jumps (a torture run after a rollback passing is this test's; the explicit `doit
    rollback` is the test before)."""
    c = cluster
    c.doit("pssh", "--on", "b", "echo later > /data/after; sync")
    run = c.doit("torture", "--from", "formed", "--count", "2", "namespace", "--seconds", "5")
    assert (run.stdout + run.stderr).count("rolled back to snapshot formed") == 2
    assert re.search(r"^2 runs, \S+ to \S+: 0 failed$", run.stdout, re.M), run.stdout  # --count's series
    assert re.search(r"^namespace +0/2 +0/2 +-$", run.stdout, re.M), run.stdout
    last = json.loads((runs(c)[-1] / "run.json").read_text())
    assert last["properties"]["count"] == "2/2"
    listed = on_each(c, "ls /data")
    assert len(set(listed.values())) == 1 and "before-a" in listed["a"] and "after" not in listed["a"], listed
    # Past OCFS2's dead threshold (20 s in the suite) since the last jump: the nodes resumed
    # before the last run started, which its run.json says to the second (rounded down).
    resumed_by = calendar.timegm(time.strptime(last["started"], "%Y-%m-%dT%H:%M:%SZ")) + 1
    time.sleep(max(0.0, resumed_by + 25 - time.time()))
    assert lost_peers(c) == PEERS_LOST_AT_SNAPSHOT, "OCFS2 lost no node across the rollbacks"
    assert set(on_each(c, "mountpoint -q /data && echo mounted").values()) == {"mounted\n"}


def test_refusals_change_nothing(cluster):
    c = cluster
    before = {s: c.dom(s).ID() for s in suffixes(c)}
    assert "snapshot formed exists" in one_error_line(c.doit("snapshot", "formed", check=False))
    assert "no snapshot nosuch" in one_error_line(c.doit("rollback", "nosuch", check=False))
    bad = c.doit("snapshot", "../up", check=False)
    assert bad.returncode == 2 and "cannot name a snapshot" in one_error_line(bad)
    assert {s: c.dom(s).ID() for s in suffixes(c)} == before, "every node the same run, running"


def test_a_snapshot_killed_while_saving_memory_converges(cluster):
    c = cluster
    run = start_doit("snapshot", "killed", f"config={c.path}", hold=("--before", "dali.virt:Libvirt.save_memory"),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in run.stderr:
        if line.startswith("held at"):
            break
    assert libvirt.VIR_DOMAIN_PAUSED in states(c).values(), "held with the nodes paused"
    run.kill()
    run.wait()
    status = c.doit("status")
    assert "a doit dump or snapshot was stopped before it could" in status.stdout + status.stderr
    assert set(states(c).values()) == {libvirt.VIR_DOMAIN_RUNNING}
    assert "killed" not in c.doit("snapshots").stdout, "what it left was removed"
    assert set(on_each(c, "mountpoint -q /data && echo mounted").values()) == {"mounted\n"}


def test_a_shut_off_snapshot_a_rollback_from_off_and_clean(cluster):
    c = cluster
    c.doit("destroy")
    c.doit("snapshot", "cold")
    assert re.search(r"^cold .* - +\S", c.doit("snapshots").stdout, re.M), "every node shut off in it"
    # The FAM zeroed back to its golden copy (OCFS2 gone from it), the nodes off: the rollback
    # puts the FAM of the snapshot back before any node resumes, and restores, without a boot.
    c.doit("reset:fam")
    c.doit("rollback", "formed")
    assert set(states(c).values()) == {libvirt.VIR_DOMAIN_RUNNING}
    assert set(on_each(c, "mountpoint -q /data && echo mounted").values()) == {"mounted\n"}
    c.doit("rollback", "cold")
    assert set(states(c).values()) == {libvirt.VIR_DOMAIN_SHUTOFF}
    dry = c.doit("clean", "-n").stdout
    for name in ("formed", "cold"):
        assert f"would remove snapshot {c.cfg.data_dir / 'snapshots' / name}\n" in dry, dry
    c.doit("snapshot", "--delete", "cold")
    assert "cold" not in c.doit("snapshots").stdout


def test_a_rollback_killed_while_restoring_is_finished_by_the_next_doit(cluster):
    """From the cluster the test before left shut off: a rollback restores every node paused and
    resumes them only at its end, so a kill halfway leaves none running."""
    c = cluster
    run = start_doit("rollback", "formed", f"config={c.path}",
                     hold=("--before", "dali.virt:Libvirt.restore_paused"), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    for line in run.stderr:
        if line.startswith("held at"):
            break
    run.kill()
    run.wait()
    assert snapshot.pending(c.cfg)
    assert libvirt.VIR_DOMAIN_RUNNING not in states(c).values(), "no half-restored cluster runs"
    status = c.doit("status")
    assert "finishing the rollback to snapshot formed" in status.stdout + status.stderr
    assert set(states(c).values()) == {libvirt.VIR_DOMAIN_RUNNING} and not snapshot.pending(c.cfg)
    for s, out in on_each(c, "mountpoint -q /data && ls /data").items():
        assert "before-a" in out and "after" not in out, (s, out)
    # Left so, running, rolled back: test_torture.py, next on this worker, needs it running.
