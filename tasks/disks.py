"""Stage: each node's disk. A node's disk holds its work and is never remade: only its
existence counts."""

from __future__ import annotations

from dali import disks, remote
from dali.cluster import Cluster
from dali.errors import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    for node in cluster.nodes:
        disk = cluster.disk(node)
        if cluster.remote:
            yield {
                "basename": "disk", "name": node.name,
                "doc": f"{node.name}'s disk",
                "actions": [Step(f"make {disk} on {cluster.uri}", remote.create_disk, cluster, virt, node,
                                 changes=cluster)],
                "uptodate": [(uptodate(remote.disk_exists), [cluster, virt, node], {})],
                "task_dep": ["preflight", "fam"] + (["image"] if node.is_original else ["freeze"]),
                "clean": [CleanStep(f"remove {disk} on {cluster.uri} if dali made it", remote.remove_volume,
                                    cluster, virt, disk, changes=cluster)],
            }
            continue
        yield {
            "basename": "disk", "name": node.name,
            "doc": f"{node.name}'s disk",
            "actions": [Step(f"make {disk}", disks.create, cluster, node, changes=cluster)],
            "uptodate": [disk.exists],
            "task_dep": ["preflight", "fam"] + (["image"] if node.is_original else ["freeze"]),
            "clean": [CleanStep(f"remove {disk} if dali made it and no domain uses it",
                                disks.remove_file, cluster, virt, disk, changes=cluster)],
        }
