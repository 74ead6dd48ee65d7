"""What the tests share as pytest fixtures and hooks: a loaded default config, a data directory
qemu could use, libvirt's in-memory test driver left as found, the real clusters the guest
modules share, and which worker runs which module. The helpers are in tests/support/."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import libvirt
import pytest

from dali import settings
from dali.storage.local import LocalDir
from dali.virt import Libvirt
from support import schedule
from support.cluster import (FIRST_TAG, ClusterUnderTest, current_test, has_three_nodes, make_three_nodes,
                             template_without_other_clusters, unique_tag)
from support.files import local_files


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
def files_in(config_in) -> LocalDir:
    """config_in's files (local_files)."""
    return local_files(config_in)


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
            if n.isActive():
                n.destroy()
            n.undefine()


# --- which worker runs which module (tests/support/schedule.py) ---------------------------------

def pytest_collection_modifyitems(items):
    schedule.in_order(items)


def pytest_xdist_make_scheduler(config, log):
    return schedule.by_cluster(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    current_test[0] = item  # a real cluster made outside a guest test is refused (support/cluster.py)


# --- the first cluster: what test_cluster.py takes through a user's first day, and
# test_cluster_living.py (next in file order) lives in and finally cleans -----------------------

@pytest.fixture(scope="session")
def first_cluster(tmp_path_factory):
    """The cluster test_cluster.py builds step by step (its clones b and c added, d and e
    added and removed) and leaves running, and test_cluster_living.py uses as it finds it, then
    shuts down and cleans: built and booted once for both."""
    c = ClusterUnderTest(tmp_path_factory.mktemp(FIRST_TAG) / "cluster.toml", FIRST_TAG)
    yield c
    c.teardown()


# The states tests of the first cluster start from. Each is cheap when the cluster is in it
# already (a doit that has nothing to do), which it is when the modules run in file order; alone,
# a test gets its state made.

@pytest.fixture
def built(first_cluster):
    """Built as its file says (`doit`): at first the original alone, shut off."""
    first_cluster.doit()
    return first_cluster


@pytest.fixture
def three_nodes(first_cluster):
    """The original and its linked clones b and c, defined."""
    make_three_nodes(first_cluster)
    return first_cluster


@pytest.fixture
def running(first_cluster):
    """a, b and c booted (`doit start`). Found so, nothing is run: most tests of
    test_cluster_living.py start from here, and a doit each would add up."""
    c = first_cluster
    try:
        ready = has_three_nodes(c) and all(c.dom(s).isActive() for s in "abc")
    except libvirt.libvirtError:  # not defined (yet, or any more)
        ready = False
    if not ready:
        make_three_nodes(c)
        c.doit("start")
    return c


@pytest.fixture
def three_nodes_off(three_nodes):
    """a, b and c defined and shut off (forced: the graceful way is test_shutdown's)."""
    if any(three_nodes.dom(s).isActive() for s in "abc"):
        three_nodes.doit("destroy")
    return three_nodes


@pytest.fixture(scope="session")
def ocfs2_cluster(tmp_path_factory):
    """Three nodes with OCFS2 on the shared device, shared by test_shared_fs.py (which builds it
    step by step, adds a fourth node and takes it out again), test_remote.py (the local cluster running beside a
    remote one), test_torture.py (which needs it running) and test_snapshots.py (which rolls it
    back to its snapshots): one cluster booted once for all.
    Each module starts what it needs. A node forced off is dead after 20 s without its
    heartbeat, not OCFS2's 60: the survivors of a crash test wait that long."""
    tag = unique_tag("dalifs")
    c = ClusterUnderTest(tmp_path_factory.mktemp(tag) / "cluster.toml", tag, clones=["b", "c"],
                         fs={"type": "ocfs2", "mountpoint": "/data", "slots": 8, "heartbeat_threshold": 11})
    yield c
    c.teardown()


@pytest.fixture(scope="session")
def dax_cluster(tmp_path_factory):
    """Two nodes on libvirt's own NVDIMM device (device.style = "native") and a 256 MiB FAM,
    shared by test_coherence.py (checked: OCFS2 on fsdax, then devdax) and test_device_modes.py
    (devdax unchecked, the control; a refused mode change; clean): one original boot per
    namespace mode, two clusters' builds fewer (tests/support/schedule.py runs them in that
    order, on one worker). The host's AppArmor template as it was before any of it is kept as
    `template_before`: the native style never writes there."""
    tag = unique_tag("dalidax")
    c = ClusterUnderTest(tmp_path_factory.mktemp(tag) / "cluster.toml", tag, clones=["b"],
                         fam={"size": "256M"}, device={"style": "native", "mode": "fsdax"})
    c.template_before = template_without_other_clusters(c)
    yield c
    c.teardown()
