"""Stage: freeze the shut-off original's disk once, before the first clone (dali/disks.py)."""

from __future__ import annotations

from dali import disks, marks
from dali.cluster import Cluster
from dali.errors import Step
from dali.reporter import log
from dali.virt import Libvirt


def remove(cluster: Cluster, dryrun: bool) -> None:
    marks.remove_if_ours(cluster.frozen_disk, cluster.tag, log, dryrun)


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "freeze",
        "doc": "freeze the original's disk for cloning",
        "actions": [Step("freeze the original's disk", disks.freeze, cluster, virt)],
        "uptodate": [(disks.is_frozen, [cluster], {})],
        "task_dep": ["original"],
        "clean": [Step(f"remove {cluster.frozen_disk} if dali made it", remove, cluster)],
    }
