"""What a user sees from `doit` when something is wrong: one line, non-zero exit, nothing made."""

import shutil
import tempfile
import types
from pathlib import Path

import libvirt
import pytest
from doit.loader import get_module

from dali.cluster import REPO
from dali.errors import DaliError
from support.doit import one_error_line, run_doit


def test_bad_config_value(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[network]\nforward = "bridge"\n')
    line = one_error_line(run_doit(f"config={bad}"))
    assert "network.forward" in line and "nat, none" in line


def test_bad_environment_value():
    line = one_error_line(run_doit("list", env={"DALI_VCPUS": "many"}))
    assert "DALI_VCPUS" in line


def test_a_package_name_that_is_no_package_name(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[image]\nextra_packages = ["Vim"]\n')
    line = one_error_line(run_doit("list", f"config={bad}"))
    assert "image.extra_packages" in line and "'Vim'" in line


def test_an_error_while_tasks_are_made_is_one_line(monkeypatch, capsys):
    """Every stage is created through dodo.tasks_of: a DaliError there ends as one line."""
    monkeypatch.setenv("DALI_TAG", "clitest")
    dodo = get_module(str(REPO / "dodo.py"))

    def gen_tasks(cluster, files, virt):
        raise DaliError("something the user can fix: fix it")
        yield  # a generator, like every stage's

    with pytest.raises(SystemExit) as e:
        list(dodo.tasks_of(types.SimpleNamespace(gen_tasks=gen_tasks)))
    assert e.value.code == "dali: something the user can fix: fix it"

    def unforeseen(cluster, files, virt):  # a bug, or an input no check knows: one line all the same
        raise OSError(36, "File name too long")
        yield
    with pytest.raises(SystemExit) as e:
        list(dodo.tasks_of(types.SimpleNamespace(gen_tasks=unforeseen, __name__="tasks.prune")))
    assert e.value.code.startswith("dali: making the tasks of tasks.prune failed: OSError: ")
    assert "DALI_TRACEBACK=1" in e.value.code and "\n" not in e.value.code


@pytest.mark.libvirt
def test_preflight_stops_before_anything_is_made():
    """A DALI_DIR the qemu user cannot reach: refused before the network or FAM exist."""
    home = Path(tempfile.mkdtemp(prefix="dali-home-", dir="/var/tmp"))  # 0700, like ~
    try:
        run = run_doit(env={"DALI_DIR": str(home / "ivp"), "DALI_TAG": "clitest",
                            "DALI_NETWORK": "clitest"})
        line = one_error_line(run)
        assert line.startswith("dali: preflight:") and "libvirt-qemu" in line and str(home) in line
        conn = libvirt.open("qemu:///system")
        assert "clitest" not in [n.name() for n in conn.listAllNetworks()]
        assert not (home / "ivp").exists()
    finally:
        shutil.rmtree(home)
        shutil.rmtree(REPO / "state" / "clitest", ignore_errors=True)
        (REPO / "state" / "clitest.doit.sqlite").unlink(missing_ok=True)


def test_start_batch_sizes(config_in, monkeypatch):
    """doit start --batch: a number, 0 for all at once, or auto (one node more than the host's
    cores hold: every core stays busy to the end of a boot)."""
    from dali import lifecycle
    monkeypatch.setattr(lifecycle.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert lifecycle.batch_size(config_in, "3") == 3
    assert lifecycle.batch_size(config_in, "0") is None
    assert lifecycle.batch_size(config_in, "auto") == 4 // config_in.vcpus + 1
    with pytest.raises(DaliError, match="--batch two: give a number of nodes"):
        lifecycle.batch_size(config_in, "two")
