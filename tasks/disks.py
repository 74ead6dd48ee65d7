"""Stage: each node's disk. A node's disk holds its work and is never remade: only its
existence counts. Made where the cluster's files live (dali/storage/)."""

from __future__ import annotations

from dali import disks
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    for node in cluster.nodes:
        disk = cluster.disk(node)
        yield {
            "basename": "disk", "name": node.name,
            "doc": f"{node.name}'s disk",
            "actions": [Step(f"make {disk}{files.where}", disks.create, cluster, files, node, changes=cluster)],
            "uptodate": [(uptodate(disks.exists), [cluster, files, node], {})],
            "task_dep": ["preflight", "fam"] + (["image"] if node.is_original else ["freeze"]),
            "clean": [CleanStep(f"remove {disk}{files.where} if dali made it and no domain uses it",
                                files.remove, disk, changes=cluster)],
        }
