"""What the tests share: a loaded default config, a data directory qemu could use, libvirt's
in-memory test driver left as found, and the real `doit` command run from the checkout."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import tempfile
import threading
from pathlib import Path

import libvirt
import pytest

from dali import settings, storage
from dali.cluster import REPO
from dali.scratch import abandoned_work
from dali.storage.local import LocalDir, backing_file
from dali.virt import Libvirt

DOIT = REPO / ".venv" / "bin" / "doit"
PYTHON = REPO / ".venv" / "bin" / "python"
HELD_DOIT = REPO / "tests" / "support" / "held_doit.py"  # doit, held at a point of a test's choosing

# Appended to every real test cluster's tag: two test runs at once (two checkouts, or a run
# beside the leftovers of a killed one) never meet on a domain or network name.
RUN_SUFFIX = "".join(secrets.choice(string.ascii_lowercase) for _ in range(3))


def unique_tag(base: str) -> str:
    """A test cluster's tag: base plus this run's suffix (tags are at most 16 characters)."""
    return base + RUN_SUFFIX


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


def as_at_a_terminal(ignored: tuple[signal.Signals, ...] = ()):
    """For a child, between fork and exec: SIGINT as a terminal's Ctrl-C delivers it, whatever
    this process inherited (a non-interactive shell starts its background jobs with SIGINT
    ignored, and Python keeps it so), and `ignored` ignored, as nohup does SIGHUP."""
    def reset() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
    return reset


def start_doit(*args: str, hold: tuple[str, ...] = (), env: dict | None = None,
               ignored: tuple[signal.Signals, ...] = (), **popen) -> subprocess.Popen:
    """`doit ARGS` from the checkout, as a user starts it at a terminal, not waited for. `hold`:
    tests/support/held_doit.py's options, holding the run at a point (it says `held at ...` on
    stderr when it is there)."""
    command = [str(PYTHON), "-P", str(HELD_DOIT), *hold, "--", *args] if hold else [str(DOIT), *args]
    return subprocess.Popen(command, cwd=REPO, env=user_env(**(env or {})), text=True,
                            preexec_fn=as_at_a_terminal(ignored), **popen)


def run_until(c: ClusterUnderTest, pattern: str, sig: signal.Signals, delay: float, *args: str,
              hold: tuple[str, ...] = ()) -> tuple[bool, str]:
    """Run doit; when it prints a line matching pattern, wait `delay` s and send `sig`.
    Returns whether that happened, and everything doit printed.

    A pattern that is a task's title (`^\\.  TASK$`) with no delay is a kill on the boundary
    before TASK: the run is held there (tests/support/held_doit.py --at-task) until the signal
    comes, which would otherwise land wherever the run had got to by then, a task or two later
    at times. `hold`: held_doit.py's options for another point the run is held at, one it
    reaches after the pattern's line (say, the step after the last one that prints a line)."""
    title = re.fullmatch(r"\^\\\.  (.+)\$", pattern)
    if title and delay == 0:
        hold = ("--at-task", title.group(1), *hold)
    process = start_doit(*args, f"config={c.path}", hold=hold, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    said, hit = [], threading.Event()
    for line in process.stdout:
        said.append(line)
        if not hit.is_set() and re.search(pattern, line):
            hit.set()
            threading.Timer(delay, process.send_signal, [sig]).start()
    process.wait()
    output = "".join(said)
    print(f"$ doit {' '.join(args)}  # {sig.name} at {pattern!r}+{delay}s: exit {process.returncode}\n{output}")
    if hit.is_set():
        if sig == signal.SIGINT:
            assert process.returncode == 130 and "dali: stopped by Ctrl-C" in output, output
        else:
            assert process.returncode == -signal.SIGKILL, output
        assert "Traceback" not in output
    return hit.is_set(), output


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


def local_files(cluster) -> LocalDir:
    """The cluster's files in its data directory (dali/storage/local.py); its libvirt, where a
    deletion asks which domains still use a file, libvirt's in-memory test driver."""
    return LocalDir(cluster, Libvirt("test:///default", cluster.id))


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


# --- a real cluster on qemu:///system, for the tests that boot guests ----------------------------

# The test being set up or run: a real cluster made for a test without the guest mark would
# slip into the quick loop (`pytest -m "not guest"`), which must boot nothing.
_current: list = [None]


# --- two pytest workers (pyproject.toml: -n 2) ------------------------------------------------
# A module that boots guests builds its cluster once, in a module or session fixture, so all its
# tests run in one worker; the modules of a group below share one session cluster, and run in one
# worker, in the order listed (each lives in what the one before leaves). Longest first, so that the two
# workers finish together (docs/testing.md has the figures). The modules without guests come
# right after the first group: the first worker takes that group, the second the quick modules,
# meanwhile the first builds the checkout's image (on a fresh checkout, a minute and a half of
# debootstrap, which any cluster the second worker started would only wait for), then the rest.
# Every module marked guest must be listed here.
CLUSTER_MODULES = [
    # the OCFS2 cluster (conftest.ocfs2_cluster); test_remote.py runs its remote cluster beside it
    ("test_shared_fs.py", "test_remote.py", "test_torture.py"),
    ("test_cluster.py", "test_cluster_living.py"),  # the first cluster (conftest.first_cluster)
    ("test_kill.py",),
    ("test_device_modes.py",),
    ("test_kernel_loop.py",),
    ("test_two_clusters.py",),
]
_GROUP_OF = {module: group for group, modules in enumerate(CLUSTER_MODULES) for module in modules}
_PLACE_IN_GROUP = {module: place for modules in CLUSTER_MODULES for place, module in enumerate(modules)}


QUICK_AFTER = 1  # the modules without guests go after this many groups of CLUSTER_MODULES


def pytest_collection_modifyitems(items):
    """The first QUICK_AFTER groups of CLUSTER_MODULES, the modules without guests in file
    order, then the other groups; a group's modules in the order it lists them."""
    unlisted = sorted({item.path.name for item in items
                       if item.get_closest_marker("guest") and item.path.name not in _GROUP_OF})
    if unlisted:
        raise pytest.UsageError(f"{', '.join(unlisted)}: a module marked guest must be listed in "
                                "tests/conftest.py's CLUSTER_MODULES (which worker runs it)")
    order = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (_GROUP_OF.get(item.path.name, QUICK_AFTER - 0.5),
                                 _PLACE_IN_GROUP.get(item.path.name, 0), order[id(item)]))


def pytest_xdist_make_scheduler(config, log):
    """xdist's loadfile, with each group of CLUSTER_MODULES one unit of work, in the order
    collected. (Not xdist_group marks: pytest 9 ignores the node ids xdist 3.8 rewrites for them.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByCluster(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            group = _GROUP_OF.get(Path(path).name)
            return path if group is None else CLUSTER_MODULES[group][0]

    config.option.loadscopereorder = False  # the collection's order: longest first
    return ByCluster(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _current[0] = item


def _must_be_marked_guest() -> None:
    item = _current[0]
    if item is not None and item.get_closest_marker("guest") is None:
        raise AssertionError(f"{item.nodeid} makes a real cluster: mark it pytest.mark.guest "
                             "(pytest -m 'not guest' is the quick loop, which boots nothing)")


class ClusterUnderTest:
    """A test cluster: its own cluster file, tag and data directory, an isolated network with a
    subnet dali picks (so it never collides with a user's cluster), and doit run on it the way a
    user would. teardown() leaves the host as it was, also after a failed test."""

    def __init__(self, path: Path, tag: str, remote=None, **overrides):
        """`remote`: a tests/remote_host.py RemoteHost whose libvirtd runs the cluster, its
        files in /var/lib/dali/<tag> there (a directory this machine does not have)."""
        _must_be_marked_guest()
        self.path, self.tag, self.remote = path, tag, remote
        if remote is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix=f"dali-{tag}-", dir="/var/tmp")) / tag
            self.data_dir.parent.chmod(0o755)
            uri = "qemu:///system"
        else:
            self.data_dir = Path("/var/lib/dali") / tag
            uri = remote.uri
            overrides = {"uri": uri, "device": {"style": "native"}, **overrides}
        self.settings: dict = {}
        self.set(**overrides)
        self.virt = Libvirt(uri, self.cfg.id)

    def set(self, **overrides) -> None:
        """Rewrite the cluster file: top-level keys as given, sections as dicts."""
        values = {"tag": self.tag, "original": "a", "clones": [], "dir": str(self.data_dir),
                  "network": {"forward": "none"}, "timeouts": {"boot": 900, "shutdown": 120},
                  **self.settings, **overrides}
        self.settings = values
        lines = [f"{k} = {_toml(v)}" for k, v in values.items() if not isinstance(v, dict)]
        for section, table in values.items():
            if isinstance(table, dict):
                lines += [f"[{section}]"] + [f"{k} = {_toml(v)}" for k, v in table.items()]
        self.path.write_text("\n".join(lines) + "\n")
        self.cfg = settings.load(self.path, env={})
        # Its files, as dali reaches them (a directory here, the pool of a remote host).
        self.files = storage.of(self.cfg, Libvirt(self.cfg.uri, self.cfg.id))

    def doit(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        run = run_doit(*args, f"config={self.path}", env=env)
        if check:
            assert run.returncode == 0, run.stdout + run.stderr
        return run

    def dom(self, suffix: str):
        return self.virt.conn.lookupByName(self.tag + suffix)

    def disk(self, suffix: str) -> Path:
        return self.cfg.disk(self.tag + suffix)

    def teardown(self) -> None:
        # Forced off first, then clean: clean alone shuts running nodes down gracefully (ACPI,
        # up to timeouts.shutdown per node), and that path has tests of its own (test_cluster's
        # shutdown and clean, test_kill's killed clean). Here it would only cost minutes.
        self.doit("destroy", check=False)
        self.doit("clean", check=False)
        # Whatever a failed test left: only objects and files carrying this cluster's mark.
        for dom in self.virt.our_domains().values():
            if dom.isActive():
                dom.destroy()
            for snap in dom.listAllSnapshots():
                snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
            dom.undefine()
        net = self.virt.network(self.cfg.network.name) if self._network_is_ours() else None
        if net is not None:
            if net.isActive():
                net.destroy()
            net.undefine()
        if self.remote is not None:
            # Its files are the remote host's, which RemoteHost.stop() removes with the rest of
            # that daemon: nothing of this machine's to remove but the state.
            shutil.rmtree(self.cfg.state_dir, ignore_errors=True)
            for leftover in (self.cfg.dep_file, self.cfg.lock_file):
                leftover.unlink(missing_ok=True)
            return
        template = self.cfg.apparmor_template
        if template.exists() and str(self.cfg.fam_path) in template.read_text():
            from dali import apparmor
            apparmor.remove_rule(self.cfg)
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)
        shutil.rmtree(self.cfg.state_dir, ignore_errors=True)
        for leftover in (self.cfg.dep_file, self.cfg.lock_file):
            leftover.unlink(missing_ok=True)

    def _network_is_ours(self) -> bool:
        try:
            return self.virt.network(self.cfg.network.name) is not None
        except Exception:
            return False


# --- the first cluster: what test_cluster.py takes through a user's first day, and
# test_cluster_living.py (next in file order) lives in and finally cleans -----------------------

FIRST_TAG = unique_tag("dalitest")


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


def _has_three_nodes(c: ClusterUnderTest) -> bool:
    return c.settings["clones"] == ["b", "c"] and c.settings.get("clone", {}).get("mode", "linked") == "linked"


def _make_three_nodes(c: ClusterUnderTest) -> None:
    if not _has_three_nodes(c):
        c.set(clones=["b", "c"], clone={"mode": "linked"})
    c.doit()


@pytest.fixture
def three_nodes(first_cluster):
    """The original and its linked clones b and c, defined."""
    _make_three_nodes(first_cluster)
    return first_cluster


@pytest.fixture
def running(first_cluster):
    """a, b and c booted (`doit start`). Found so, nothing is run: most tests of
    test_cluster_living.py start from here, and a doit each would add up."""
    c = first_cluster
    try:
        ready = _has_three_nodes(c) and all(c.dom(s).isActive() for s in "abc")
    except libvirt.libvirtError:  # not defined (yet, or any more)
        ready = False
    if not ready:
        _make_three_nodes(c)
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
    step by step, and adds a fourth node), test_remote.py (the local cluster running beside a
    remote one) and test_torture.py (which needs it running): one cluster booted once for all.
    Each module starts what it needs. A node forced off is dead after 20 s without its
    heartbeat, not OCFS2's 60: the survivors of a crash test wait that long."""
    tag = unique_tag("dalifs")
    c = ClusterUnderTest(tmp_path_factory.mktemp(tag) / "cluster.toml", tag, clones=["b", "c"],
                         fs={"type": "ocfs2", "mountpoint": "/data", "slots": 8, "heartbeat_threshold": 11})
    yield c
    c.teardown()


def _toml(value) -> str:
    """A TOML value: strings, numbers and booleans as JSON writes them (the two agree there),
    lists of them, and inline tables ({ key = value, ... })."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def torture_runs(c: ClusterUnderTest) -> list[Path]:
    """The cluster's kept torture runs, oldest first."""
    base = c.cfg.state_dir / "runs"
    return sorted(base.iterdir()) if base.exists() else []


def torture_table(run: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """doit torture's summary rows by workload: nodes, ops, violations, ops/s, MiB/s, worst op."""
    rows = {}
    for line in run.stdout.splitlines():
        words = line.split()
        if len(words) == 7 and words[1].isdigit() and words[2].isdigit():
            rows[words[0]] = words[1:]
    return rows


def files_under(path: Path) -> set[str]:
    """Every file and directory below path, relative, dot-files included."""
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def debootstrap_of(c: ClusterUnderTest) -> str:
    """A pgrep pattern for a debootstrap of this cluster's image recipe, and no other: another
    recipe's (test_kill.py's, in another pytest worker, or a user's) may be running beside it."""
    from dali.image import wanted_recipe
    packages = ",".join(wanted_recipe(c.cfg)["packages"])
    return "debootstrap .*--include=" + re.sub(r"([.\[\](){}*+?|^$\\])", r"\\\1", packages) + " "


def assert_built(c: ClusterUnderTest, clones: list[str]) -> None:
    """The end state of an uninterrupted `doit` of this cluster: exactly these objects and
    files, all carrying the cluster's mark, nothing half-made or left over, and nothing more to
    do. test_cluster.py holds an uninterrupted run to it, test_kill.py every interrupted one."""
    from dali import apparmor, fam, marks
    names = [c.tag + s for s in ["a", *clones]]
    assert set(c.virt.our_domains()) == set(names)
    for name in names:
        assert c.virt.conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, name
    net = c.virt.network(c.cfg.network.name)
    assert net.isActive() and net.autostart()
    expected = {"FAM", "FAM.golden", "image", "image/base.qcow2", "image/vmlinuz", "image/initrd.img",
                *(f"{n}.qcow2" for n in names), *(f"{n}.identity" for n in names)} | \
        ({"frozen.qcow2"} if clones else set())
    assert files_under(c.cfg.data_dir) == expected
    for rel in expected:
        assert marks.is_ours(c.cfg.data_dir / rel, c.cfg), rel
    if clones:
        assert backing_file(c.disk("a")) == str(c.cfg.frozen_disk)
    assert fam.namespace(c.cfg.fam_path)["mode"] == "fsdax"
    assert files_under(c.cfg.state_dir) == {"network.xml", "ssh", "ssh/id_ed25519", "ssh/id_ed25519.pub",
                                            "ssh/known_hosts", "ssh_config", "hosts", "xml",
                                            *(f"xml/{n}.xml" for n in names)}
    # work of a dead process only: a build running beside the tests, or a kept tree, is not abandoned
    assert not abandoned_work(c.cfg.cache_dir), "abandoned work"
    template = c.cfg.apparmor_template.read_text()
    assert template.count(apparmor.rule(c.cfg)) == 1
    assert not (c.cfg.apparmor_template.parent / ".TEMPLATE.qemu.dali-new").exists()
    leftovers = subprocess.run(["pgrep", "-af", f"{debootstrap_of(c)}|qemu-img.*{c.tag}"],
                               capture_output=True, text=True).stdout.strip()
    assert not leftovers, leftovers
    again = c.doit()
    assert re.findall(r"^\.  (\S+)", again.stdout, flags=re.M) == [], "and nothing left to do"
