"""Stage: the FAM's golden copy, made once the original has set the device up; and the
commands that go back to the state right after cloning: `doit reset`, which does what reset:disks
and reset:fam do (dali/reset.py, through the cluster's Storage). Every node must be shut off."""

from __future__ import annotations

from dali import reset
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    golden = reset.golden(cluster)
    yield {
        "basename": "golden",
        "doc": "FAM.golden: the device as the original left it, for reset:fam",
        "actions": [Step("keep a golden copy of the FAM", reset.make_golden, cluster, files, changes=cluster)],
        "uptodate": [(uptodate(reset.golden_is_current), [cluster, files], {})],
        "task_dep": ["original"],
        "clean": [CleanStep(f"remove {golden}{files.where} if dali made it", files.remove, golden,
                            changes=cluster)],
    }
    # Three tasks, not a group and its two subtasks: doit runs a group's subtasks in whatever
    # order their dependencies allow, and the second could then be refused after the first had
    # changed its half. `doit reset` checks both halves, then changes both. The checks take the
    # cluster's lock (changes=), so nothing starts a node between a check and its change.
    def steps(*what: str) -> list[Step]:  # a task's own Step objects: doit gives each its task
        titles = {"disks_ready": "check that every disk can go back",
                  "fam_ready": "check that the FAM can go back",
                  "put_disks_back": "put the disks back", "put_fam_back": "put the FAM back"}
        return [Step(titles[w], getattr(reset, w), cluster, files, virt, changes=cluster) for w in what]

    yield {
        "basename": "reset",
        "doc": "nodes shut off: every disk back to the frozen state, the FAM to its golden copy",
        "actions": steps("disks_ready", "fam_ready", "put_disks_back", "put_fam_back"),
        "task_dep": ["clone", "golden"], "uptodate": [False],
    }
    yield {
        "basename": "reset:disks",
        "doc": "every node's disk back to the frozen state (nodes shut off)",
        "actions": steps("disks_ready", "put_disks_back"),
        "task_dep": ["clone"], "uptodate": [False],
    }
    yield {
        "basename": "reset:fam",
        "doc": "the FAM back to its golden copy: the original's namespace, a device of zeros",
        "actions": steps("fam_ready", "put_fam_back"),
        "task_dep": ["golden"], "uptodate": [False],
    }
