"""Every refusal leaves the host as it was: each bad setting of test_settings.py's table, and
each preflight failure, given to a real `doit` (on qemu:///system for the preflight ones): one
line, a non-zero exit, and nothing appeared: no file or directory under state/ or the data
directory, no libvirt domain or network, no AppArmor rule."""

import os
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import pytest

from dali.cluster import REPO
from support.doit import one_error_line, run_doit
from test_settings import BAD_VALUES

STATE = REPO / "state"
TEMPLATE = Path("/etc/apparmor.d/libvirt/TEMPLATE.qemu")


def _ours_in_state(prefix: str) -> list[str]:
    return sorted(p.name for p in STATE.iterdir() if p.name.startswith(prefix)) if STATE.exists() else []


def _refused(tmp_path: Path, toml: str, env: dict, tag: str) -> str:
    """doit on that cluster file and environment; the one error line. The file gets a tag of
    its own and a data directory under tmp_path unless the case sets them."""
    data = tmp_path / "data"
    lines = ([] if "tag" in toml or "DALI_TAG" in env else [f'tag = "{tag}"'])
    lines += ([] if "dir" in toml.split("\n[")[0] or "DALI_DIR" in env else [f'dir = "{data}"'])
    config = tmp_path / "cluster.toml"
    config.write_text("\n".join(lines + [toml]) + "\n")
    line = one_error_line(run_doit(f"config={config}", env={"DALI_NETWORK": tag, **env}))
    assert not data.exists(), f"{data} was made: {line}"
    return line


def test_every_bad_setting_is_refused_with_nothing_made(tmp_path_factory):
    tag = "refused" + secrets.token_hex(3)
    before = TEMPLATE.read_text() if TEMPLATE.exists() else ""

    def one(case):
        n, (toml, env, words) = case
        line = _refused(tmp_path_factory.mktemp(f"case{n}"), toml, env, tag)
        return [w for w in words if w not in line and w not in ("4300 digits",)], line

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, enumerate(BAD_VALUES)))
    missing = [(BAD_VALUES[i][0][:40], line) for i, (words, line) in enumerate(results) if words]
    assert not missing, missing
    assert _ours_in_state(tag) == [] and _ours_in_state("IVP") == []
    assert not any(tag in line for line in (TEMPLATE.read_text() if TEMPLATE.exists() else "").splitlines()
                   if line not in before.splitlines())


@pytest.mark.libvirt
def test_every_preflight_failure_leaves_nothing(tmp_path):
    tag = "refused" + secrets.token_hex(3)
    home = Path(tempfile.mkdtemp(prefix="dali-home-", dir="/var/tmp"))  # 0700, like ~
    shared = Path(tempfile.mkdtemp(prefix="dali-shared-", dir="/var/tmp"))
    os.chmod(shared, 0o777)
    big = Path(tempfile.mkdtemp(prefix="dali-big-", dir="/var/tmp"))
    os.chmod(big, 0o755)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # Someone else's network, on a subnet a cluster file then asks for.
    other_subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    other = libvirt.open("qemu:///system").networkCreateXML(
        f"<network><name>{tag}-other</name><bridge name='{tag[:8]}o'/>"
        f"<ip address='{other_subnet}.1' prefix='24'/></network>")
    cases = [
        ({"DALI_DIR": str(big / "c"), "config_extra": f'address = "{other_subnet}.254"'}, "overlaps"),
        ({"DALI_DIR": str(home / "c")}, "libvirt-qemu"),  # qemu cannot enter it
        ({"DALI_DIR": str(shared / "c")}, "users other than root"),
        ({"DALI_DIR": str(blocker / "c")}, "not writable"),
        ({"DALI_DIR": str(big / "c"), "config_extra": '[fam]\nsize = "100T"'}, "fam.size"),
    ]
    try:
        for env, expected in cases:
            extra = env.pop("config_extra", "")
            config = tmp_path / "cluster.toml"
            config.write_text(f'tag = "{tag}"\n[network]\nforward = "none"\n{extra}\n')
            line = one_error_line(run_doit(f"config={config}", env={"DALI_NETWORK": tag, **env}))
            assert line.startswith("dali: preflight:") and expected in line, line
            assert not Path(env["DALI_DIR"]).exists(), line
            assert _ours_in_state(tag) == [], "no state directory, and no doit records"
            conn = libvirt.open("qemu:///system")
            assert tag not in [n.name() for n in conn.listAllNetworks()]
            assert not [d.name() for d in conn.listAllDomains() if d.name().startswith(tag)]
    finally:
        other.destroy()
        for d in (home, shared, big):
            os.chmod(d, 0o755)
            os.rmdir(d) if not any(d.iterdir()) else None
