"""The task graph: names, dependencies, what a config change makes stale, the clean order.

dodo.py is loaded the way doit loads it, for a throwaway tag; nothing here talks to libvirtd.
"""

import shutil
import sys

import pytest
from doit.cmd_clean import CleanDepTree
from doit.control import TaskControl
from doit.doit_cmd import reset_vars, set_var
from doit.loader import get_module, load_tasks

from dali import domain, settings
from dali.cluster import REPO
from support.files import local_files


@pytest.fixture
def graph(monkeypatch):
    def load(**env):
        env = {"DALI_TAG": "graphtest", **env}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        sys.modules.pop("dodo", None)
        dodo = get_module(str(REPO / "dodo.py"))  # as doit loads it
        tasks = TaskControl(load_tasks(vars(dodo))).tasks  # adds file_dep -> target deps
        return dodo, tasks
    yield load
    shutil.rmtree(REPO / "state" / "graphtest", ignore_errors=True)
    (REPO / "state" / "graphtest.doit.sqlite").unlink(missing_ok=True)


def deps(tasks, name):
    return set(tasks[name].task_dep)


def closure(tasks, name):
    """Every task that must run before `name` (task_dep, and setup tasks such as getargs')."""
    seen, todo = set(), [name]
    while todo:
        task = tasks[todo.pop()]
        for d in task.task_dep + task.setup_tasks:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_stages_and_their_order(graph):
    dodo, tasks = graph()
    assert dodo.DOIT_CONFIG["default_tasks"] == ["clone"]
    assert dodo.DOIT_CONFIG["backend"] == "sqlite3"
    assert dodo.DOIT_CONFIG["dep_file"].endswith("state/graphtest.doit.sqlite")
    for name in ["preflight", "network", "fam", "apparmor", "image", "accel", "disk:graphtesta",
                 "render:graphtesta", "define:graphtesta", "original:cached", "original:boot",
                 "original:reconfigure", "original:shutdown", "freeze", "define:graphtestb",
                 "define:graphtestc", "prune", "clone", "start", "shutdown", "verify"]:
        assert name in tasks, name
    assert {"preflight", "network", "fam", "apparmor", "disk:graphtesta",
            "render:graphtesta"} <= deps(tasks, "define:graphtesta")
    assert deps(tasks, "original:cached") == {"fam"}  # no boot: the FAM alone
    assert deps(tasks, "original:boot") == {"define:graphtesta", "original:cached"}
    assert deps(tasks, "original:reconfigure") == {"original:boot"}
    assert deps(tasks, "original:shutdown") == {"original:reconfigure"}
    assert "freeze" in deps(tasks, "disk:graphtestb")
    assert "original:shutdown" in closure(tasks, "freeze")
    assert "accel" in closure(tasks, "render:graphtesta")  # its verdict is the domain type
    assert "image:base" in closure(tasks, "accel")  # the probe boots the image's kernel
    # A new kernel is probed again, the same one never: the image's stamp, which names it, is
    # among the values accel's config_changed holds (doit's own record, not a side file).
    assert not tasks["accel"].file_dep
    everything = closure(tasks, "clone")
    assert {"define:graphtestb", "define:graphtestc", "prune", "original:shutdown"} <= everything
    assert "start" not in everything and "verify" not in everything


def test_default_doit_builds_no_clone_when_there_are_none(graph):
    _, tasks = graph(DALI_CLONES="")
    assert not [t for t in tasks if t.startswith("define:") and t != "define:graphtesta"]
    assert "freeze" not in closure(tasks, "clone")


def test_own_image_skips_the_image_build(graph, tmp_path):
    own = tmp_path / "mine.qcow2"
    own.write_bytes(b"")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'tag = "graphtest"\n[image]\npath = "{own}"\n')
    reset_vars()
    set_var("config", str(cfg))  # as `doit config=PATH` does
    try:
        _, tasks = graph()
    finally:
        reset_vars()
    assert not [t for t in closure(tasks, "clone") if t.startswith("image:")]


def test_clean_removes_domains_before_network_fam_and_image(graph):
    _, tasks = graph()
    tree = CleanDepTree()
    tree.build_nodes_with_deps(tasks, "clone")
    order = tree.flat()
    pos = {name: i for i, name in enumerate(order)}
    for node in ("graphtesta", "graphtestb"):
        assert pos[f"define:{node}"] < pos[f"disk:{node}"]
        assert pos[f"define:{node}"] < pos["network"]
        assert pos[f"define:{node}"] < pos["fam"]
    assert pos["disk:graphtestb"] < pos["freeze"]
    assert pos["disk:graphtesta"] < pos["image"]
    assert pos["prune"] < pos["network"]
    assert order[-1] == "preflight"  # its clean sweeps the leftovers, so it must be last


def xml_inputs(cluster, suffix):
    """What render:<node> hands to config_changed: the node's XML is stale when it changes."""
    node = next(n for n in cluster.nodes if n.suffix == suffix)
    return domain.template_values(cluster, local_files(cluster), node)


def test_what_makes_a_node_stale(config):
    # Adding a clone leaves every existing node's settings (and so its XML) untouched.
    more = settings.load(env={"DALI_CLONES": "b c d"})
    for s in "abc":
        assert xml_inputs(config, s) == xml_inputs(more, s)
    # Memory, the FAM and the network concern every node.
    for env in ({"DALI_MEM_GB": "2"}, {"DALI_NETWORK": "other"}, {"DALI_VCPUS": "2"}):
        changed = settings.load(env=env)
        for s in "abc":
            assert xml_inputs(config, s) != xml_inputs(changed, s), env
    # The clone mode is how a clone's disk is made, not part of its domain.
    copy = config._replace(clone_mode="copy")
    assert xml_inputs(config, "b") == xml_inputs(copy, "b")


def test_kill_points_follow_a_cold_runs_order(tmp_path):
    """test_kill.py stops a cold run at task boundaries in the order the run meets them; a point
    the graph has moved ahead of the one before is never met (the run went past it already) and
    fails that test only after minutes of booting. The order is doit's, walked here without
    building anything (support/cold_order.py), under a few hash seeds, on test_kill's settings."""
    import os
    import re
    import subprocess

    import test_kill
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(f'tag = "{test_kill.TAG}"\noriginal = "a"\nclones = ["b"]\n'
                            f'dir = "{tmp_path / "data"}"\n[network]\nforward = "none"\n'
                            '[clone]\nmode = "copy"\n')
    titles = [re.fullmatch(r"\^\\\.  (.+)\$", pattern) for pattern, _, _ in test_kill.BUILD]
    titles = [title.group(1) for title in titles if title]
    assert len(titles) > 10
    for seed in ("0", "1", "2"):
        order = subprocess.run([sys.executable, str(REPO / "tests/support/cold_order.py"), str(cluster_file)],
                               env={**os.environ, "PYTHONHASHSEED": seed}, cwd=REPO, check=True,
                               capture_output=True, text=True).stdout.split()
        at = 0
        for title in titles:
            # the same task again is fine: the run after a kill at its boundary starts it again
            met = [i for i, task in enumerate(order) if i >= at and re.fullmatch(title, task)]
            assert met, f"hash seed {seed}: {title!r} comes before the point ahead of it in {order}"
            at = met[0]
