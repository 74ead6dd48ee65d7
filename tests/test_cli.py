"""What a user sees from `doit` when something is wrong: one line, non-zero exit, nothing made."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import libvirt
import pytest

from tasks import config

REPO = config.REPO


def doit(*args, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("DALI_")}
    return subprocess.run([str(REPO / ".venv/bin/doit"), *args], cwd=REPO, capture_output=True,
                          text=True, env={**base, **(env or {})}, timeout=120)


def one_error_line(run) -> str:
    lines = [l for l in (run.stdout + run.stderr).splitlines() if l.strip()]
    assert run.returncode != 0
    assert "Traceback" not in run.stdout + run.stderr
    errors = [l for l in lines if l.startswith("dali: ")]
    assert len(errors) == 1, lines
    return errors[0]


def test_bad_config_value(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[network]\nforward = "bridge"\n')
    line = one_error_line(doit(f"config={bad}"))
    assert "network.forward" in line and "nat, none" in line


def test_bad_environment_value():
    line = one_error_line(doit("list", env={"DALI_VCPUS": "many"}))
    assert "DALI_VCPUS" in line


@pytest.mark.libvirt
def test_preflight_stops_before_anything_is_made():
    """A DALI_DIR the qemu user cannot reach: refused before the network or FAM exist."""
    home = Path(tempfile.mkdtemp(prefix="dali-home-", dir="/var/tmp"))  # 0700, like ~
    try:
        run = doit("config=" + str(REPO / "cluster.toml"),
                   env={"DALI_DIR": str(home / "ivp"), "DALI_TAG": "clitest",
                        "DALI_NETWORK": "clitest"})
        line = one_error_line(run)
        assert line.startswith("dali: preflight:") and "libvirt-qemu" in line and str(home) in line
        conn = libvirt.open("qemu:///system")
        assert "clitest" not in [n.name() for n in conn.listAllNetworks()]
        assert not (home / "ivp").exists()
    finally:
        shutil.rmtree(home)
        shutil.rmtree(REPO / "state" / "clitest", ignore_errors=True)
