"""Stage: the FAM's golden copy, made once the original has set the device up; and the
commands that go back to the state right after cloning: `doit reset`, which is reset:disks and
reset:fam (dali/reset.py; on a remote libvirt host, dali/remote.py's, through its pool). Every
node must be shut off."""

from __future__ import annotations

from dali import disks, remote, reset
from dali.cluster import Cluster
from dali.errors import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    how = remote if cluster.remote else reset  # the same four functions, files or volumes
    remove = remote.remove_volume if cluster.remote else disks.remove_file
    golden = reset.golden(cluster)
    yield {
        "basename": "golden",
        "doc": "FAM.golden: the device as the original left it, for reset:fam",
        "actions": [Step("keep a golden copy of the FAM", how.make_golden, cluster, virt, changes=cluster)],
        "uptodate": [(uptodate(how.golden_is_current), [cluster, virt], {})],
        "task_dep": ["original"],
        "clean": [CleanStep(f"remove {golden} if dali made it", remove, cluster, virt, golden,
                            changes=cluster)],
    }
    yield {"basename": "reset", "name": None,
           "doc": "nodes shut off: every disk back to the frozen state, the FAM to its golden copy"}
    yield {
        "basename": "reset", "name": "disks",
        "doc": "every node's disk back to the frozen state (nodes shut off)",
        "actions": [Step("put the disks back", how.reset_disks, cluster, virt, changes=cluster)],
        "task_dep": ["clone"], "uptodate": [False],
    }
    yield {
        "basename": "reset", "name": "fam",
        "doc": "the FAM back to its golden copy: the original's namespace, a device of zeros",
        "actions": [Step("put the FAM back", how.reset_fam, cluster, virt, changes=cluster)],
        "task_dep": ["golden"], "uptodate": [False],
    }
