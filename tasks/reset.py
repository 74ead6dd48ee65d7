"""Stage: the FAM's golden copy, made once the original has set the device up; and the
commands that go back to the state right after cloning: `doit reset`, which is reset:disks and
reset:fam (dali/reset.py). Every node must be shut off."""

from __future__ import annotations

from dali import disks, remote, reset
from dali.cluster import Cluster
from dali.errors import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    if cluster.remote:
        yield from _on_remote_host(cluster, virt)
        return
    yield {
        "basename": "golden",
        "doc": "FAM.golden: the device as the original left it, for reset:fam",
        "actions": [Step("keep a golden copy of the FAM", reset.make_golden, cluster, changes=cluster)],
        "uptodate": [(uptodate(reset.golden_is_current), [cluster], {})],
        "task_dep": ["original"],
        "clean": [CleanStep(f"remove {reset.golden(cluster)} if dali made it", disks.remove_file,
                            cluster, virt, reset.golden(cluster), changes=cluster)],
    }
    yield {"basename": "reset", "name": None,
           "doc": "nodes shut off: every disk back to the frozen state, the FAM to its golden copy"}
    yield {
        "basename": "reset", "name": "disks",
        "doc": "every node's disk back to the frozen state (nodes shut off)",
        "actions": [Step("put the disks back", reset.reset_disks, cluster, virt, changes=cluster)],
        "task_dep": ["clone"], "uptodate": [False],
    }
    yield {
        "basename": "reset", "name": "fam",
        "doc": "the FAM back to its golden copy: the original's namespace, a device of zeros",
        "actions": [Step("put the FAM back", reset.reset_fam, cluster, virt, changes=cluster)],
        "task_dep": ["golden"], "uptodate": [False],
    }


def _on_remote_host(cluster: Cluster, virt: Libvirt):
    """The same tasks, on the volumes of the cluster's pool (dali/remote.py)."""
    golden = cluster.data_dir / remote.GOLDEN
    yield {
        "basename": "golden",
        "doc": "FAM.golden: the device as the original left it, for reset:fam",
        "actions": [Step("keep a golden copy of the FAM", remote.make_golden, cluster, virt, changes=cluster)],
        "uptodate": [(uptodate(remote.golden_is_current), [cluster, virt], {})],
        "task_dep": ["original"],
        "clean": [CleanStep(f"remove {golden} on {cluster.uri} if dali made it", remote.remove_volume,
                            cluster, virt, golden, changes=cluster)],
    }
    yield {"basename": "reset", "name": None,
           "doc": "nodes shut off: every disk back to the frozen state, the FAM to its golden copy"}
    yield {
        "basename": "reset", "name": "disks",
        "doc": "every node's disk back to the frozen state (nodes shut off)",
        "actions": [Step("put the disks back", remote.reset_disks, cluster, virt, changes=cluster)],
        "task_dep": ["clone"], "uptodate": [False],
    }
    yield {
        "basename": "reset", "name": "fam",
        "doc": "the FAM back to its golden copy: the original's namespace, a device of zeros",
        "actions": [Step("put the FAM back", remote.reset_fam, cluster, virt, changes=cluster)],
        "task_dep": ["golden"], "uptodate": [False],
    }
