"""Stage: freeze the shut-off original's disk once, before the first clone (dali/disks.py; on
a remote libvirt host dali/remote.py, which copies where a file is renamed)."""

from __future__ import annotations

from dali import disks, remote
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    how = remote if cluster.remote else disks  # freeze(cluster, virt) and is_frozen
    frozen = (uptodate(remote.is_frozen), [cluster, virt], {}) if cluster.remote else \
        (disks.is_frozen, [cluster], {})
    remove = remote.remove_volume if cluster.remote else disks.remove_file
    yield {
        "basename": "freeze",
        "doc": "freeze the original's disk for cloning",
        "actions": [Step("freeze the original's disk", how.freeze, cluster, virt, changes=cluster)],
        "uptodate": [frozen],
        "task_dep": ["original"],
        "clean": [CleanStep(f"remove {cluster.frozen_disk} if dali made it and nothing is built on it",
                            remove, cluster, virt, cluster.frozen_disk, changes=cluster)],
    }
