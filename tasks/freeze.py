"""Stage: freeze the shut-off original's disk once, before the first clone (dali/disks.py)."""

from __future__ import annotations

from dali import disks
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "freeze",
        "doc": "freeze the original's disk for cloning",
        "actions": [Step("freeze the original's disk", disks.freeze, cluster, files, virt, changes=cluster)],
        "uptodate": [(uptodate(disks.is_frozen), [cluster, files], {})],
        "task_dep": ["original"],
        "clean": [CleanStep(f"remove {cluster.frozen_disk}{files.where} if dali made it and nothing is "
                            "built on it", files.remove, cluster.frozen_disk, changes=cluster)],
    }
