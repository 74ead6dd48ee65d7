"""Living in the cluster, on qemu:///system with real guests: status, per-node control, pssh
and pput through the guest agent, ssh with the generated config, names and fixed addresses,
the serial console, the inventory, a panic and its evidence; then the cluster's end: doit
shutdown, doit clean -n, a clean that cannot go on, doit clean.

The cluster is conftest.first_cluster, as test_cluster.py (just before, in file order) leaves it:
three nodes running. A test that adds a node removes it again. Alone, each test gets its state
made (`pytest tests/test_cluster_living.py::test_shutdown`)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from pathlib import Path

import libvirt
import pytest

from dali import access, evidence, fam, guest, network
from support.cluster import FIRST_TAG, torture_runs, torture_table
from support.doit import one_error_line, run_until

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

TAG = FIRST_TAG


@pytest.fixture
def cluster(running):
    return running


@pytest.fixture(scope="module", autouse=True)
def nodes_off_after(first_cluster):
    """Whatever the tests left running is forced off when the module ends (idle nodes would
    slow every later module); the cluster itself goes with the session."""
    yield
    first_cluster.doit("destroy", check=False)


def is_off(dom) -> bool:
    return dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def rows(run) -> dict[str, list[str]]:
    """doit status's node rows, by node name."""
    return {line.split()[0]: line.split() for line in run.stdout.splitlines()
            if line.startswith(TAG) and not line.startswith(f"{TAG}:")}


def guest_ipv4(c, suffix) -> str:
    return guest.ipv4(c.virt, c.dom(suffix))[0]


def identity(c, suffixes) -> dict:
    """What touching another node must leave as it was: domain ID and boot time."""
    return {s: (c.dom(s).ID(), c.dom(s).isActive()) for s in suffixes}


def test_status_rows_match_libvirt_and_the_guests(cluster):
    run = cluster.doit("status")
    table = rows(run)
    assert set(table) == {f"{TAG}{s}" for s in "abc"}
    fixed = access.inventory_file(cluster.cfg).read_text()
    for s in "abc":
        row = table[f"{TAG}{s}"]
        assert row[1] == "running"
        assert row[2] == guest_ipv4(cluster, s), "the address the node has is its fixed one"
        assert f"{TAG}{s} {row[2]}" in fixed, "and the inventory names it"
        assert row[3:5] == ["fsdax", "1054867456"]
        assert re.fullmatch(r"\d+m\d\ds", row[-1]), row  # uptime
    assert f"network {cluster.cfg.network.name}:" in run.stdout and "isolated" in run.stdout
    assert f"FAM {cluster.cfg.fam_path}: 1073741824 bytes, fsdax namespace" in run.stdout


def test_pssh_shows_every_node_and_fails_with_a_failing_node(cluster):
    run = cluster.doit("pssh", "hostname")
    for s in "abc":
        assert f"--- {TAG}{s} (exit 0)\n{TAG}{s}\n" in run.stdout
    failing = cluster.doit("pssh", f'test "$(hostname)" != {TAG}b', check=False)
    line = one_error_line(failing)
    assert f"{TAG}b (exit 1)" in line and f"{TAG}a" not in line
    assert f"{TAG}b: exit 1" in failing.stdout and f"{TAG}a: exit 0" in failing.stdout
    one = cluster.doit("pssh", "--on", "c", "uname", "-r")
    assert f"--- {TAG}c (exit 0)" in one.stdout and f"--- {TAG}a" not in one.stdout


def test_pput_delivers_identical_bytes(cluster, tmp_path):
    payload = os.urandom(5 * 2**20 + 12345)  # a kernel module's size, and then some
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    source.chmod(0o755)
    cluster.doit("pput", str(source), "/root/payload.bin")
    digest = hashlib.sha256(payload).hexdigest()
    run = cluster.doit("pssh", "sha256sum /root/payload.bin; stat -c %a /root/payload.bin")
    for s in "abc":
        assert f"--- {TAG}{s} (exit 0)\n{digest}  /root/payload.bin\n755\n" in run.stdout


def test_ssh_with_the_generated_config(cluster):
    config = access.ssh_config_file(cluster.cfg)
    for s in "ab":
        run = subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=60",
                              f"{TAG}{s}", "hostname"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"{TAG}{s}"
    # Each node has its own host key, made on the host and handed over on its identity disk:
    # one ed25519 key, a different one on every node, and the one known_hosts holds.
    keys = {}
    for s in "abc":
        listed = cluster.doit("pssh", "--on", s, "ls /etc/ssh/ | grep '^ssh_host_.*_key.pub$'; "
                              "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub").stdout.split("\n")
        assert [k for k in listed if k.startswith("ssh_host_")] == ["ssh_host_ed25519_key.pub"], listed
        keys[s] = listed[listed.index("ssh_host_ed25519_key.pub") + 1]
        assert keys[s] in access.known_hosts_file(cluster.cfg).read_text()
    assert len(set(keys.values())) == 3, keys


def test_nodes_resolve_each_other_by_name(cluster):
    run = cluster.doit("pssh", "--on", "a", f"getent ahostsv4 {TAG}b; ping -c 1 -W 5 {TAG}c")
    assert f"{guest_ipv4(cluster, 'b')}" in run.stdout and "1 received" in run.stdout


# Four tests take nodes down and up, each from what the one before leaves (three boots in all,
# fixtures making the state when a test runs alone): c forced off; b shut down; both started in
# batches; c forced off again and started by hand.

def test_destroy_forces_one_node_off(cluster):
    before_others = identity(cluster, "ab")
    cluster.doit("destroy", "c")
    assert cluster.dom("c").state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert identity(cluster, "ab") == before_others


def only_running(c, up: str) -> None:
    """Exactly the nodes `up` of a, b and c running: the others forced off, these started."""
    down = [s for s in "abc" if s not in up and c.dom(s).isActive()]
    if down:
        c.doit("destroy", *down)
    if not all(c.dom(s).isActive() for s in up):
        c.doit("start", *up)


@pytest.fixture
def c_off(three_nodes):
    """a and b running, c off, as test_destroy_forces_one_node_off leaves them."""
    only_running(three_nodes, "ab")
    return three_nodes


def test_one_node_shut_down_leaves_the_others_alone(c_off):
    cluster = c_off
    before_a = identity(cluster, "a")
    cluster.doit("shutdown", "b")
    assert not cluster.dom("b").isActive()
    assert identity(cluster, "a") == before_a
    assert rows(cluster.doit("status"))[f"{TAG}b"][1:3] == ["shut", "off"]


@pytest.fixture
def b_and_c_off(three_nodes):
    """a running, b and c off, as test_one_node_shut_down_leaves_the_others_alone leaves them."""
    only_running(three_nodes, "a")
    return three_nodes


def test_start_in_batches_boots_the_next_batch_once_the_first_is_up(b_and_c_off):
    """doit start --batch 1 b c: c is started only once b answers and has its host key. Each
    comes back on its fixed address, and a node is named by its suffix or its whole name."""
    cluster = b_and_c_off
    before_a = identity(cluster, "a")
    out = cluster.doit("start", "--batch", "1", f"{TAG}b", "c").stderr  # progress lines go to stderr
    lines = out.splitlines()
    started_b = next(i for i, line in enumerate(lines) if f"started {TAG}b;" in line)
    b_answered = next(i for i, line in enumerate(lines) if f"{TAG}b: guest agent answered" in line)
    started_c = next(i for i, line in enumerate(lines) if f"started {TAG}c;" in line)
    assert started_b < b_answered < started_c, out
    assert cluster.dom("b").isActive() and cluster.dom("c").isActive()
    assert identity(cluster, "a") == before_a
    fixed = network.addresses_of(cluster.cfg, cluster.virt)
    for s in "bc":
        assert guest_ipv4(cluster, s) == fixed[TAG + s], "the fixed address is kept across a restart"
    run = cluster.doit("pssh", "--on", "b,c", "systemctl is-active ssh.socket")
    assert len(re.findall(r"\bactive$", run.stdout, re.M)) == 2, run.stdout


def test_a_node_started_by_hand_is_booting_until_usable_and_pssh_waits_for_it(c_off):
    """Started by hand (virsh start, or a node coming back), a node answers its agent long
    before its device is there: status calls it booting, and pssh waits until it is usable,
    as doit start would have, instead of running on a half-booted node."""
    cluster = c_off
    cluster.dom("c").create()  # as `virsh start`
    table = rows(cluster.doit("status"))
    assert table[f"{TAG}c"][1] == "booting", table
    assert table[f"{TAG}a"][1] == "running", table
    run = cluster.doit("pssh", "--on", "c", "test -e /dev/pmem0 && systemctl is-active ssh.socket")
    assert f"{TAG}c: still booting; waiting until usable" in run.stderr, run.stderr
    assert f"--- {TAG}c (exit 0)\nactive" in run.stdout
    assert rows(cluster.doit("status"))[f"{TAG}c"][1] == "running"


def test_a_node_added_while_others_run_gets_a_name_and_address(cluster):
    before = {s: (guest_ipv4(cluster, s), cluster.dom(s).ID()) for s in "abc"}
    cluster.set(clones=["b", "c", "d"])
    cluster.doit("clone")
    cluster.doit("start", "d")
    assert {s: (guest_ipv4(cluster, s), cluster.dom(s).ID()) for s in "abc"} == before
    d = guest_ipv4(cluster, "d")
    assert d not in [a for a, _ in before.values()]
    run = cluster.doit("pssh", "--on", "b", f"getent ahostsv4 {TAG}d")
    assert d in run.stdout
    assert f"{TAG}d {d}" in access.inventory_file(cluster.cfg).read_text()
    # and gone again, as the cluster's other tests expect it: forced off, out of the config,
    # undefined, its disk removed
    cluster.doit("destroy", "d")
    cluster.set(clones=["b", "c"])
    cluster.doit()
    cluster.doit(f"remove:{TAG}d")
    assert not cluster.disk("d").exists()


def test_the_serial_console_is_a_root_shell(cluster):
    """What `virsh console NODE` shows: the serial getty logged root in by itself."""
    log = f"/var/log/libvirt/qemu/{TAG}b-console.log"
    with open(log, errors="replace") as f:
        text = f.read()
    assert "root (automatic login)" in text


def test_unknown_node_is_one_line(cluster):
    line = one_error_line(cluster.doit("start", "zz", check=False))
    assert "no node zz" in line and f"{TAG}a" in line


def fam_digest(c, size: int = 8 << 20) -> str:
    """The first `size` bytes of the shared device, read on the host through the FAM."""
    start = fam.namespace(c.cfg.fam_path)["data_offset"]
    with open(c.cfg.fam_path, "rb") as f:
        return hashlib.sha256(os.pread(f.fileno(), size, start)).hexdigest()


def release_in_dump(path: Path) -> str:
    """The kernel release a memory dump holds, as the crash utility reads it (its vmcoreinfo)."""
    run = subprocess.run(["crash", "--osrelease", str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip()


def test_torture_on_the_raw_device_puts_every_byte_back(cluster):
    before = fam_digest(cluster)
    run = cluster.doit("torture", "--seconds", "10")
    assert "mmap does not run here: a bare block device is cached by each node on its own" in run.stderr
    rows = torture_table(run)
    assert set(rows) == {"block"}, run.stdout  # the one workload for a raw block device
    assert int(rows["block"][1]) > 0 and rows["block"][2] == "0"
    assert fam_digest(cluster) == before, "the bytes the run overwrote are back"
    assert not (cluster.cfg.state_dir / "fam-restore.json").exists()


def test_a_panic_mid_run_is_caught_and_its_evidence_kept(cluster, tmp_path):
    script = tmp_path / "panic.sh"
    script.write_text('#!/bin/sh\nif [ "$DALI_NODE_INDEX" = 2 ]; then sleep 2; echo c > /proc/sysrq-trigger; fi\n'
                      "sleep 6\n")
    script.chmod(0o755)
    line = one_error_line(cluster.doit("torture", "--script", str(script), "--seconds", "8",
                                       "--on", "a,b,c", check=False))
    assert f"{TAG}c: panic: Kernel panic - not syncing: sysrq triggered crash" in line
    kept = Path(re.search(r"evidence in (\S+)\)", line).group(1))
    assert kept.parent == torture_runs(cluster)[-1] / "crash", "the run's evidence lives under the run"
    release = cluster.virt.run(cluster.dom("a"), ["uname", "-r"]).stdout.strip()
    assert release_in_dump(kept / "memory.kdump") == release, "a memory dump that crash reads"
    assert b"sysrq triggered crash" in (kept / "console.log").read_bytes()
    assert "vmlinux" in (kept / "README").read_text()

    run = cluster.doit("status")
    assert rows(run)[f"{TAG}c"][1] == "panicked"
    assert f"{TAG}c: panicked: panic: Kernel panic - not syncing: sysrq triggered crash" in run.stdout
    assert cluster.dom("c").state()[0] == libvirt.VIR_DOMAIN_CRASHED, "pvpanic told libvirt, which kept it"
    line = one_error_line(cluster.doit("pssh", "--on", "c", "true", check=False))
    assert f"{TAG}c (not running)" in line, "a crashed node is not waited for as a booting one"

    cluster.doit("start", "c")
    assert rows(cluster.doit("status"))[f"{TAG}c"][1] == "running"
    assert [p.name for p in kept.parent.iterdir()] == [kept.name], "kept once"
    assert not evidence.crash_dir(cluster.cfg).exists(), "not again when c was started"


def test_dump_takes_the_nodes_named_at_the_same_moment(cluster):
    before = identity(cluster, "abc")
    run = cluster.doit("dump", "a", "b")
    where = Path(re.search(r"the dumps are in (\S+)", run.stderr).group(1))
    release = cluster.virt.run(cluster.dom("a"), ["uname", "-r"]).stdout.strip()
    for s in "ab":
        assert release_in_dump(where / f"{TAG}{s}.kdump") == release
        assert cluster.dom(s).state()[0] == libvirt.VIR_DOMAIN_RUNNING, "resumed"
    assert not (where / f"{TAG}c.kdump").exists()
    assert "paused together at" in (where / "README").read_text()
    assert identity(cluster, "abc") == before, "nobody rebooted"
    assert cluster.doit("pssh", "--on", "a,b", "true").returncode == 0
    assert not (cluster.cfg.state_dir / "paused.json").exists(), "its record of the pause gone"


def test_a_dump_stopped_by_ctrl_c_resumes_its_nodes(cluster):
    """Ctrl-C while libvirt dumps the first node's memory (3 s or so): the dump ends with its one
    line and exit 130 (run_until checks both) once that node's dump returns, and both nodes run
    on, the same boots, their agents answering. tests/test_dump.py has the rest on libvirt's
    test driver: the other signals, a SIGKILL, a doit beside a dump."""
    before = identity(cluster, "ab")
    stopped, _ = run_until(cluster, r"^paused .*; dumping their memory", signal.SIGINT, 0.5, "dump", "a", "b")
    assert stopped, "the dump paused the nodes"
    for s in "ab":
        assert cluster.dom(s).state()[0] == libvirt.VIR_DOMAIN_RUNNING, "resumed"
    assert identity(cluster, "ab") == before, "nobody rebooted"
    assert not (cluster.cfg.state_dir / "paused.json").exists()
    assert cluster.doit("pssh", "--on", "a,b", "true").returncode == 0


# --- the cluster's end ----------------------------------------------------------------------

def test_shutdown(running):
    cluster = running
    cluster.doit("shutdown")
    for s in "abc":
        assert is_off(cluster.dom(s))


def dry_run_list(run) -> list[tuple[str, str]]:
    """doit clean -n's (kind, object) lines; it prints nothing else."""
    lines = (run.stdout + run.stderr).splitlines()
    found = [re.fullmatch(r"would remove (node|network|AppArmor rule|file|directory|state directory) (.+)", line)
             for line in lines]
    assert all(found), [line for line, m in zip(lines, found) if not m]
    return [m.groups() for m in found]


def test_clean_dry_run_says_what_it_would_remove_and_removes_nothing(three_nodes):
    cluster, data = three_nodes, three_nodes.cfg.data_dir
    listed = dry_run_list(cluster.doit("clean", "-n"))
    assert len(listed) == len(set(listed)), "each object once"
    kinds = [kind for kind, _ in listed]
    assert kinds == sorted(kinds, key=["node", "network", "AppArmor rule", "file", "directory",
                                      "state directory"].index), "grouped by kind, in clean's order"
    assert {("node", f"{TAG}{s}") for s in "abc"} | {("network", cluster.cfg.network.name)} <= set(listed)
    files = {what for kind, what in listed if kind == "file"}
    assert {str(cluster.disk(s)) for s in "abc"} | {str(cluster.cfg.fam_path), str(data / "image/base.qcow2"),
                                                   str(cluster.cfg.frozen_disk)} <= files
    assert {("directory", str(data / "image")), ("directory", str(data)),
            ("state directory", str(cluster.cfg.state_dir))} <= set(listed)
    for s in "abc":
        assert cluster.dom(s) and cluster.disk(s).exists()
    assert cluster.cfg.fam_path.exists() and cluster.cfg.state_dir.exists()


def test_clean_stops_when_a_domain_cannot_go(three_nodes_off):
    """An undefine that fails (a domain with a snapshot) stops clean before any disk or the FAM
    goes, with one line and a non-zero exit."""
    cluster = three_nodes_off
    c = cluster.dom("c")
    c.snapshotCreateXML("<domainsnapshot><name>keep</name></domainsnapshot>", 0)
    try:
        line = one_error_line(cluster.doit("clean", check=False))
        assert f"{TAG}c" in line and "snapshot" in line
        assert cluster.disk("c").exists() and cluster.cfg.fam_path.exists()
        assert cluster.dom("c")
    finally:
        for snap in c.listAllSnapshots():
            snap.delete()


def test_clean_leaves_nothing(three_nodes_off):
    """doit clean removes exactly what doit clean -n listed, says so one object a line, and
    leaves nothing of the cluster: not even its doit records in state/."""
    cluster = three_nodes_off
    listed = set(dry_run_list(cluster.doit("clean", "-n")))
    run = cluster.doit("clean", "--forget")
    removed = set(re.findall(r"^removed (node|network|AppArmor rule|file|directory|state directory) (.+)$",
                             run.stderr, re.M))
    assert removed == listed
    assert "executing" not in run.stdout, "doit's own lines are dali's one line per object"
    assert not cluster.cfg.dep_file.exists() and not cluster.cfg.lock_file.exists()
    conn = cluster.virt.conn
    assert [d.name() for d in conn.listAllDomains() if d.name().startswith(TAG)] == []
    assert cluster.cfg.network.name not in [n.name() for n in conn.listAllNetworks()]
    assert not cluster.cfg.data_dir.exists()  # FAM, disks, frozen disk, image
    assert not cluster.cfg.state_dir.exists()
    template = cluster.cfg.apparmor_template.read_text()
    assert str(cluster.cfg.fam_path) not in template
    parse = subprocess.run(["apparmor_parser", "-Q", "-K", "--skip-cache",
                            str(cluster.cfg.apparmor_template)], capture_output=True, text=True)
    assert parse.returncode == 0, parse.stderr
    assert "Traceback" not in run.stdout + run.stderr
