"""What a careless or hostile user could do to dali, and what a local user could do to a dali
run as root: each refused in one line, or made harmless (docs/reliability.md has the table; the
settings' own refusals are in test_settings.py)."""

import itertools
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import libvirt
import pytest

import dali.virt
from dali import (access, apparmor, evidence, fam, image, image_builder, lifecycle, lock, ocfs2, scratch,
                  status, verify)
from dali.cluster import REPO
from dali.errors import DaliError
from dali.text import visible
from dali.virt import ExecResult, Libvirt
from support.cluster import unique_tag
from support.doit import one_error_line, run_doit


def test_host_locks_live_in_a_directory_only_root_can_enter(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HOST_LOCKS", tmp_path / "locks")
    with lock.host_lock("network"):
        st = os.lstat(tmp_path / "locks")
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
    # A symlink planted at the lock's name is not followed: its target is neither made nor cut.
    target = tmp_path / "victim"
    target.write_text("precious")
    (tmp_path / "locks" / "other.lock").symlink_to(target)
    with pytest.raises(DaliError, match="other.lock: .*remove it"):
        with lock.host_lock("other"):
            pass
    assert target.read_text() == "precious"
    # A lock directory others could write in is refused, not used.
    os.chmod(tmp_path / "locks", 0o777)
    with pytest.raises(DaliError, match="only root can enter"):
        with lock.host_lock("network"):
            pass


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("record, killed", [
    (lambda pid: f"{pid} {scratch._boot_id()} {scratch._start_time(pid)}", True),  # the build's own
    (lambda pid: f"{pid} 00000000-0000-0000-0000-000000000000 {scratch._start_time(pid)}", False),  # before a reboot
    (lambda pid: f"{pid} {scratch._boot_id()} 1", False),  # the number is another process's now
    (lambda pid: f"{pid}", False),  # a record of older dali: no proof, no kill
])
def test_a_saved_process_group_is_killed_only_if_it_is_still_the_builds(tmp_path, record, killed):
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        work = tmp_path / f".dali-work.{_dead_pid()}.x"
        work.mkdir()
        (work / "pgid").write_text(record(child.pid))
        scratch.remove_abandoned_work(tmp_path)
        assert not work.exists()
        time.sleep(0.1)
        assert (child.poll() is not None) == killed
    finally:
        child.kill()
        child.wait()


def test_a_nodes_output_cannot_drive_the_terminal():
    assert visible("ok\tdone\n") == "ok\tdone\n"
    assert visible("\x1b]0;owned\x07\x1b[2J\rX\x7f\u2028\x85") == "^[]0;owned^G^[[2J^MX^?\\u2028\\u0085"


# --- what a node says, printed: status, evidence, a boot, a guest command, verify, OCFS2 ---------
# (torture's report and its failure line: test_torture_host.py)

PANIC = b"[  9.1] Kernel panic - not syncing: \x1b]0;owned\x07\x1b[2J\r\n"
SHOWN = "panic: Kernel panic - not syncing: ^[]0;owned^G^[[2J"


class Crashed:
    """A libvirt domain that crashed (pvpanic), and the Storage that holds its console."""

    def __init__(self, name: str):
        self._name = name

    def name(self) -> str:
        return self._name

    def state(self):
        return libvirt.VIR_DOMAIN_CRASHED, 0

    def isActive(self) -> bool:
        return True

    def ID(self) -> int:
        return 7


class Console:
    where = ""

    def console_log(self, name):
        return name

    def size(self, path):
        return len(PANIC)

    def read(self, path, start, size):
        return PANIC[start:start + size]

    def is_ours(self, path):
        return False

    def exists(self, path):
        return False

    def dump_memory(self, dom, path):
        path.write_bytes(b"")


def test_status_shows_a_panic_as_the_terminal_can(config_in, monkeypatch, capsys):
    monkeypatch.setattr(image, "wanted_tarball", lambda cluster: None)
    monkeypatch.setattr(image, "node_image_is_kept", lambda *args: False)
    c = config_in.nodes[2].name
    virt = SimpleNamespace(network=lambda name: None, domain=lambda name: Crashed(name) if name == c else None,
                           agent_answers=lambda dom: False)
    status.status(config_in, Console(), virt)
    assert (f"{c}: panicked: {SHOWN}: doit start {c} boots it again, its console and memory kept "
            f"first in {evidence.crash_dir(config_in)}/\n") in capsys.readouterr().out


def test_a_crash_kept_says_so_as_the_terminal_can_and_its_readme_as_it_came(config_in, monkeypatch):
    said = []
    monkeypatch.setattr(evidence, "log", said.append)
    c = config_in.nodes[2].name
    where = evidence.keep(config_in, Console(), SimpleNamespace(run_of=lambda dom: "1"), c,
                          "panic: Kernel panic - not syncing: \x1b]0;owned\x07\x1b[2J", dom=Crashed(c))
    assert said == [f"{c}: {SHOWN}; keeping its memory and console in {where}"]
    readme = (where / "README").read_text()
    assert "found: panic: Kernel panic - not syncing: \x1b]0;owned\x07\x1b[2J\n" in readme


def test_a_node_that_dies_while_booting_is_one_visible_line(monkeypatch):
    clock = itertools.count()
    monkeypatch.setattr(dali.virt, "time", SimpleNamespace(monotonic=lambda: next(clock), sleep=lambda _: None))
    virt = Libvirt("test:///default", "nobody")
    monkeypatch.setattr(virt, "agent_answers", lambda dom: False)
    booting = SimpleNamespace(name=lambda: "ivpa", state=lambda: (libvirt.VIR_DOMAIN_RUNNING, 0))
    with pytest.raises(DaliError) as died:
        virt.wait_for_agent(booting, 60, log=lambda line: None, crashed=lambda: "panic: \x1b[31mred\nBUG: next")
    assert str(died.value) == ("ivpa died while booting (panic: ^[[31mred | BUG: next): doit start keeps its "
                               "console and memory and boots it again")


def test_a_guest_commands_failure_is_one_visible_line():
    with pytest.raises(DaliError) as failed:
        ExecResult(1, "", "mkfs.ocfs2: \x1b[2Jdevice busy\n\nunmount it first\n").check("mkfs.ocfs2")
    assert str(failed.value) == ("mkfs.ocfs2 failed in the guest (exit 1): mkfs.ocfs2: ^[[2Jdevice busy | "
                                 "unmount it first")


def wipefs_says(signatures: str):
    """A node's agent: lsblk finds no mount, wipefs prints these signatures."""
    def run(dom, argv, **_):
        return ExecResult(0, signatures if argv[0] == "wipefs" else "", "")
    return SimpleNamespace(run=run)


def test_verify_shows_what_the_nodes_said_as_the_terminal_can(config_in, capsys):
    verify._print_table([{"node": "ivpa", "hostname": "a\x1b]0;owned\x07", "ipv4": "192.168.7.2",
                          "machine-id": "0" * 32, "mode": "fsdax\nforged", "size": 1, "namespace": "same",
                          "problems": []}])
    header, row = capsys.readouterr().out.splitlines()
    assert row.split("  ")[:2] == ["ivpa", "a^[]0;owned^G"] and " fsdax | forged " in row
    node = config_in.nodes[0]
    with pytest.raises(DaliError) as refused:
        verify.refuse_to_write(wipefs_says("ext4\x1b[2J\n"), [(node, None)], "/dev/pmem0")
    assert str(refused.value) == "/dev/pmem0 holds ext4^[[2J: verify writes nothing on a device with data on it"


def test_ocfs2_says_what_a_node_said_as_the_terminal_can(config_in, monkeypatch):
    said = []
    monkeypatch.setattr(ocfs2, "log", said.append)
    node = config_in.nodes[0]
    ocfs2._say_if_threshold_waits_for_a_boot(config_in, SimpleNamespace(
        run=lambda dom, argv, **_: ExecResult(0, "11\x1b[2J\n", "")), node, None)
    assert said[0].startswith(f"{node.name}: heartbeat threshold 11^[[2J until it boots again; ")
    with pytest.raises(DaliError) as refused:
        ocfs2._holds_ocfs2(config_in, None, ["ext4\x1b[2J"], 0)
    assert str(refused.value).startswith(f"{ocfs2.DEVICE} holds ext4^[[2J: dali formats only a blank device")


def test_digits_are_0_to_9(tmp_path):
    """str.isdigit takes '²', which int() refuses: a traceback where one line was due."""
    with pytest.raises(DaliError) as refused:
        lifecycle.batch_size(None, "²")
    assert str(refused.value) == "--batch ²: give a number of nodes (0: all at once) or auto"
    assert image_builder._version_key("6.1.0-1²2") == ["", 6, ".", 1, ".", 0, "-", 1, "²", 2, ""]
    (tmp_path / ".dali-work.².x").mkdir()  # not a process id: not a build's, so never removed
    assert scratch.abandoned_work(tmp_path) == []


def test_a_fam_path_the_template_could_not_hold_as_one_line_is_refused(config_in):
    for odd in ("a\rb", "a\u2028b", "a\x85b", "a*b"):
        weird = config_in._replace(data_dir=Path(f"/var/tmp/{odd}"))
        with pytest.raises(DaliError, match="the FAM's real path"):
            apparmor.rule(weird)


def test_a_symlinked_template_is_never_written_through(config_in, tmp_path):
    real = tmp_path / "TEMPLATE.qemu"
    real.write_text("#include <abstractions/libvirt-qemu>\n")
    link = tmp_path / "link.qemu"
    link.symlink_to(real)
    with pytest.raises(DaliError, match="is a symlink"):
        apparmor.add_rule(config_in._replace(apparmor_template=link))
    assert real.read_text() == "#include <abstractions/libvirt-qemu>\n"


def test_a_symlink_where_the_fam_goes_is_refused_and_its_target_untouched(config_in, files_in, tmp_path):
    target = tmp_path / "not-a-fam"
    target.write_bytes(b"x" * 4096)
    os.chmod(target, 0o600)
    config_in.data_dir.mkdir(parents=True)
    config_in.fam_path.symlink_to(target)
    with pytest.raises(DaliError, match="is a symlink"):
        fam.ensure(config_in, files_in, files_in.virt)
    st = target.stat()
    assert (st.st_mode & 0o777, st.st_gid, st.st_size) == (0o600, 0, 4096)


def test_a_cluster_that_is_gone_leaves_no_records(tmp_path):
    state, dep, lk = tmp_path / "t", tmp_path / "t.doit.sqlite", tmp_path / "t.lock"
    state.mkdir()
    dep.write_text("db")
    lk.write_text("")
    lock.forget_if_gone(lk, dep, state)
    assert dep.exists() and lk.exists(), "a cluster with a state directory keeps its records"
    state.rmdir()
    lock.forget_if_gone(lk, dep, state)
    assert not dep.exists() and not lk.exists()


def test_a_uri_naming_a_program_runs_nothing(tmp_path):
    """libvirt runs a uri's command= as it connects, as root: a plain `doit list` ran it. The
    uri is refused as the settings load, from the cluster file or from LIBVIRT_DEFAULT_URI,
    before libvirt is asked anything."""
    ran = tmp_path / "ran"
    program = tmp_path / "program"
    program.write_text(f"#!/bin/sh\ntouch {ran}\n")
    program.chmod(0o755)
    tag = unique_tag("cmd")
    uri = f"qemu+ssh://lab/system?command={program}"
    in_file, in_env = tmp_path / "in-file.toml", tmp_path / "in-env.toml"
    in_file.write_text(f'tag = "{tag}"\nuri = "{uri}"\n[device]\nstyle = "native"\n')
    in_env.write_text(f'tag = "{tag}"\n[device]\nstyle = "native"\n')
    line = one_error_line(run_doit("list", f"config={in_file}"))
    assert line.startswith(f"dali: {in_file}: uri = ") and "command=" in line and "remove it" in line
    line = one_error_line(run_doit("list", f"config={in_env}", env={"LIBVIRT_DEFAULT_URI": uri}))
    assert line.startswith("dali: LIBVIRT_DEFAULT_URI (setting uri) = ") and "command=" in line
    assert not ran.exists(), "the uri's program ran"
    assert not (REPO / "state" / tag).exists()


def test_ssh_config_gets_no_line_a_value_did_not_mean(config_in, files_in):
    """The last line of defence: whatever let a line break through (a uri that skipped the
    settings' checks, an address read from libvirt's network definition), ssh_config and hosts
    are not written with it. In ssh_config a `Match exec` on a line of its own runs its command
    at `ssh -G` already, in every ~/.ssh/config that Includes the file."""
    match_exec = "Match exec \"touch /tmp/dali-owned\""
    node = config_in.original_node.name
    cases = [(config_in._replace(uri="qemu+ssh://lab/system?keyfile=/k%0A" + match_exec.replace(" ", "%20")
                                 .replace('"', "%22")), {node: "192.168.7.2"}),
             (config_in, {node: f"192.168.7.2\n{match_exec}"})]
    for cluster, addresses in cases:
        with pytest.raises(DaliError, match="control or line-break character") as refused:
            access.write(cluster, files_in, addresses)
        assert "\n" not in str(refused.value)
        assert not access.ssh_config_file(cluster).exists() and not access.inventory_file(cluster).exists()
