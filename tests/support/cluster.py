"""A real test cluster on qemu:///system (ClusterUnderTest), its tag, and what the tests check of
one: the end state of a build (assert_built), the files under a directory, a debootstrap of its
recipe, its torture runs and their table."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import string
import subprocess
import tempfile
from pathlib import Path

import libvirt

from dali import settings, storage
from dali.scratch import abandoned_work
from dali.storage.local import backing_file
from dali.virt import Libvirt
from support.doit import run_doit

# Appended to every real test cluster's tag: two test runs at once (two checkouts, or a run
# beside the leftovers of a killed one) never meet on a domain or network name.
RUN_SUFFIX = "".join(secrets.choice(string.ascii_lowercase) for _ in range(3))


def unique_tag(base: str) -> str:
    """A test cluster's tag: base plus this run's suffix (tags are at most 16 characters)."""
    return base + RUN_SUFFIX


# The test being set up or run: a real cluster made for a test without the guest mark would
# slip into the quick loop (`pytest -m "not guest"`), which must boot nothing.
current_test: list = [None]  # set by conftest.pytest_runtest_setup


def _must_be_marked_guest() -> None:
    item = current_test[0]
    if item is not None and item.get_closest_marker("guest") is None:
        raise AssertionError(f"{item.nodeid} makes a real cluster: mark it pytest.mark.guest "
                             "(pytest -m 'not guest' is the quick loop, which boots nothing)")


class ClusterUnderTest:
    """A test cluster: its own cluster file, tag and data directory, an isolated network with a
    subnet dali picks (so it never collides with a user's cluster), and doit run on it the way a
    user would. teardown() leaves the host as it was, also after a failed test."""

    def __init__(self, path: Path, tag: str, remote=None, **overrides):
        """`remote`: a support.remote_host.RemoteHost whose libvirtd runs the cluster, its
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


def template_without_other_clusters(c: ClusterUnderTest) -> bytes:
    """The host's AppArmor template, without the lines other dali clusters (a user's, running
    beside the tests, or another module's) may add or remove meanwhile."""
    lines = c.cfg.apparmor_template.read_bytes().splitlines(keepends=True)
    return b"".join(line for line in lines
                    if b"# dali cluster " not in line or f"# dali cluster {c.tag}:".encode() in line)


# The first cluster: what test_cluster.py takes through a user's first day, and
# test_cluster_living.py (next in file order) lives in and finally cleans (conftest.first_cluster).
FIRST_TAG = unique_tag("dalitest")


def has_three_nodes(c: ClusterUnderTest) -> bool:
    """The first cluster's file names the original and the linked clones b and c."""
    return c.settings["clones"] == ["b", "c"] and c.settings.get("clone", {}).get("mode", "linked") == "linked"


def make_three_nodes(c: ClusterUnderTest) -> None:
    """The first cluster built with the original and the linked clones b and c."""
    if not has_three_nodes(c):
        c.set(clones=["b", "c"], clone={"mode": "linked"})
    c.doit()


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
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.exists() else []


def torture_table(run: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """doit torture's summary rows by workload: nodes, ops, violations, ops/s, MiB/s, worst op,
    verdict."""
    rows = {}
    for line in run.stdout.splitlines():
        words = line.split()
        if len(words) == 8 and words[1].isdigit() and words[2].isdigit():
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
    # Every cluster on the host edits the one template, its candidate beside it, under the
    # directory's lock (dali/apparmor.py): looked for under that lock, a candidate is one a
    # killed run left, not one another cluster's doit is writing this moment.
    with apparmor.editing_lock(c.cfg.apparmor_template):
        assert not (c.cfg.apparmor_template.parent / ".TEMPLATE.qemu.dali-new").exists()
    leftovers = subprocess.run(["pgrep", "-af", f"{debootstrap_of(c)}|qemu-img.*{c.tag}"],
                               capture_output=True, text=True).stdout.strip()
    assert not leftovers, leftovers
    again = c.doit()
    assert re.findall(r"^\.  (\S+)", again.stdout, flags=re.M) == [], "and nothing left to do"
