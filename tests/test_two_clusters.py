"""Two clusters on one host, told apart by nothing but DALI_TAG and DALI_DIR: each gets its own
network and subnet, both are built at the same time (neither waits for the other's lock), both
run and verify at once, and cleaning one leaves the other running. A second cluster that would
share a tag's names or a directory's files is refused in one line. Real libvirtd, real guests.

Both are built after another cluster of the checkout made the namespace of a FAM like theirs:
neither boots its original, each FAM gets that namespace with a uuid of its own, and their
nodes' kernels take it (dali/namespaces.py).
"""

from __future__ import annotations

import ipaddress
import subprocess
from concurrent.futures import ThreadPoolExecutor
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from dali import fam, namespaces
from support.cluster import ClusterUnderTest, unique_tag
from support.doit import DOIT, one_error_line, run_doit, user_env

ONE, TWO, THREE = unique_tag("dalione"), unique_tag("dalitwo"), unique_tag("dalithree")
from dali import settings
from dali.cluster import REPO

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]


class ByEnvironment(ClusterUnderTest):
    """A cluster set up the seed's way: DALI_TAG and DALI_DIR in the environment; the file only
    keeps its network isolated and its node count at one."""

    def set(self, **overrides) -> None:
        self.path.write_text('clones = []\n[network]\nforward = "none"\n')
        self.cfg = settings.load(self.path, env=self.env)

    @property
    def env(self) -> dict:
        return {"DALI_TAG": self.tag, "DALI_DIR": str(self.data_dir)}

    def doit(self, *args, check=True, env=None):
        return super().doit(*args, check=check, env={**self.env, **(env or {})})


@pytest.fixture(scope="module")
def cached_namespace(tmp_path_factory) -> Path:
    """The namespace of a 1 GiB fsdax FAM on the image's kernel, kept in the checkout's cache:
    there once the suite's OCFS2 or first cluster is built; when this module runs alone, made
    by a one-node cluster's original, and that cluster removed."""
    maker = ByEnvironment(tmp_path_factory.mktemp("maker") / "c.toml", unique_tag("dalins"))
    head = namespaces.cached_head(maker.cfg)
    try:
        if not head.is_file():
            maker.doit("original")
    finally:
        maker.teardown()
    assert head.is_file()
    return head


@pytest.fixture(scope="module")
def pair(tmp_path_factory, cached_namespace):
    one = ByEnvironment(tmp_path_factory.mktemp("one") / "c.toml", ONE)
    two = ByEnvironment(tmp_path_factory.mktemp("two") / "c.toml", TWO)
    yield one, two
    one.teardown()
    two.teardown()


def subnet(c: ClusterUnderTest) -> ipaddress.IPv4Network:
    ip = ET.fromstring(c.virt.network(c.cfg.network.name).XMLDesc(0)).find("ip")
    return ipaddress.IPv4Network(f"{ip.get('address')}/{ip.get('prefix')}", strict=False)


def test_both_build_at_once(pair, cached_namespace):
    runs = [subprocess.Popen([str(DOIT), f"config={c.path}"], cwd=REPO, env=user_env(**c.env),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in pair]
    for c, run in zip(pair, runs):
        out = run.communicate(timeout=3600)[0]
        print(out)
        assert run.returncode == 0, out
        assert "is changing cluster" not in out, "another cluster's lock is not ours to wait for"
        assert "the original need not boot" in out and "waiting for its guest agent" not in out
    one, two = pair
    cached = fam.namespace_in(cached_namespace.read_bytes()[fam.INFO_BLOCK_OFFSET:][:fam.INFO_BLOCK_SIZE], 1 << 30)
    ours = [fam.namespace(c.cfg.fam_path) for c in pair]
    assert [ns["mode"] for ns in ours] == ["fsdax", "fsdax"]
    assert len({ns["uuid"] for ns in ours} | {cached["uuid"]}) == 3, "a namespace of its own each"
    assert one.cfg.network.name == ONE and two.cfg.network.name == TWO
    assert not subnet(one).overlaps(subnet(two))


def test_both_run_and_verify_at_once(pair):
    with ThreadPoolExecutor(2) as both:  # each doit its own process, as two users would type them
        list(both.map(lambda c: c.doit("start"), pair))
        list(both.map(lambda c: c.doit("verify"), pair))
    for c in pair:
        assert c.dom("a").isActive()


def test_the_same_tag_in_another_dir_is_refused(pair):
    one, _ = pair
    elsewhere = Path(tempfile.mkdtemp(prefix="dali-elsewhere-", dir="/var/tmp"))
    elsewhere.chmod(0o755)
    try:
        run = run_doit(f"config={one.path}", env={"DALI_TAG": one.tag, "DALI_DIR": str(elsewhere / "x")})
        line = one_error_line(run)
        assert f"belongs to dali cluster '{ONE}'" in line and str(one.data_dir) in line
        assert not (elsewhere / "x").exists(), "refused before anything was made"
        assert one.dom("a").isActive(), "and the first cluster was not touched"
    finally:
        subprocess.run(["rm", "-rf", str(elsewhere)])


def test_a_second_tag_in_the_same_dir_is_refused(pair):
    one, _ = pair
    run = run_doit(f"config={one.path}", env={"DALI_TAG": THREE, "DALI_DIR": str(one.data_dir)})
    line = one_error_line(run)
    assert f"belongs to dali cluster '{ONE}'" in line and "its own dir" in line
    assert THREE + "a" not in [d.name() for d in libvirt.open("qemu:///system").listAllDomains()]
    cfg = settings.load(one.path, env={"DALI_TAG": THREE, "DALI_DIR": str(one.data_dir)})
    for leftover in (cfg.dep_file, cfg.lock_file):
        leftover.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(cfg.state_dir)])


def test_cleaning_one_leaves_the_other_running(pair):
    one, two = pair
    ids = {s: two.dom(s).ID() for s in "a"}
    one.doit("clean")
    assert not one.virt.our_domains() and not one.cfg.data_dir.exists()
    assert {s: two.dom(s).ID() for s in "a"} == ids, "two kept running, untouched"
    two.doit("verify")
    two.doit("clean")
