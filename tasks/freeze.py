"""Stage: freeze the shut-off original's disk once, before the first clone (dali/disks.py)."""

from __future__ import annotations

from dali import disks, remote
from dali.cluster import Cluster
from dali.errors import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    if cluster.remote:
        yield {
            "basename": "freeze",
            "doc": "freeze the original's disk for cloning",
            "actions": [Step("freeze the original's disk", remote.freeze, cluster, virt, changes=cluster)],
            "uptodate": [(uptodate(remote.is_frozen), [cluster, virt], {})],
            "task_dep": ["original"],
            "clean": [CleanStep(f"remove {cluster.frozen_disk} on {cluster.uri} if dali made it",
                                remote.remove_volume, cluster, virt, cluster.frozen_disk, changes=cluster)],
        }
        return
    yield {
        "basename": "freeze",
        "doc": "freeze the original's disk for cloning",
        "actions": [Step("freeze the original's disk", disks.freeze, cluster, virt, changes=cluster)],
        "uptodate": [(disks.is_frozen, [cluster], {})],
        "task_dep": ["original"],
        "clean": [CleanStep(f"remove {cluster.frozen_disk} if dali made it and nothing is built on it",
                            disks.remove_file, cluster, virt, cluster.frozen_disk, changes=cluster)],
    }
