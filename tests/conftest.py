"""What the tests share: a loaded default config, a data directory qemu could use, libvirt's
in-memory test driver left as found, and the real `doit` command run from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from dali import settings
from dali.cluster import REPO
from dali.virt import Libvirt

DOIT = REPO / ".venv" / "bin" / "doit"


def user_env(**extra: str) -> dict:
    """The environment a user's shell would give doit, without this shell's DALI_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALI_") and k != "LIBVIRT_DEFAULT_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def run_doit(*args: str, env: dict | None = None, timeout: int = 3600) -> subprocess.CompletedProcess:
    """`doit ARGS` from the checkout, as a user types it; prints what it said (pytest shows it
    for a failing test)."""
    run = subprocess.run([str(DOIT), *args], cwd=REPO, capture_output=True, text=True,
                         env=user_env(**(env or {})), timeout=timeout)
    print(f"$ doit {' '.join(args)}  (exit {run.returncode})\n{run.stdout}{run.stderr}")
    return run


def one_error_line(run: subprocess.CompletedProcess) -> str:
    """The run failed, printed no traceback, and exactly one 'dali: ' line: return it."""
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("dali: ")]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture
def config():
    """The default cluster (cluster.toml, no environment): nothing on disk is touched."""
    return settings.load(env={})


@pytest.fixture
def data_dir():
    """A fresh directory qemu could use. Not pytest's tmp_path: that lives in a 0700 folder,
    which preflight rightly rejects (the qemu user cannot enter it)."""
    base = Path(tempfile.mkdtemp(prefix="dali-test-", dir="/var/tmp"))
    base.chmod(0o755)
    yield base / "cluster"
    shutil.rmtree(base)


@pytest.fixture
def config_in(data_dir, tmp_path):
    """The default cluster's settings, with its FAM and disks in data_dir and its state/ under
    tmp_path: another cluster than a user's default one, which it never touches."""
    return settings.load(env={"DALI_DIR": str(data_dir)}, repo=tmp_path)


@pytest.fixture
def test_driver(config):
    """dali's libvirt adapter on libvirt's in-memory test driver, for the default cluster. The
    driver's state is shared by the whole process: whatever a test adds is removed after it."""
    virt = Libvirt("test:///default", config.id)
    domains = {d.name() for d in virt.conn.listAllDomains()}
    networks = {n.name() for n in virt.conn.listAllNetworks()}
    yield virt
    for d in virt.conn.listAllDomains():
        if d.name() not in domains:
            d.undefine()
    for n in virt.conn.listAllNetworks():
        if n.name() not in networks:
            n.undefine()
