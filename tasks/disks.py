"""Stage: each node's disk. A node's disk holds its work and is never remade: only its
existence counts. A file here, or a volume of the cluster's pool on a remote libvirt host."""

from __future__ import annotations

from dali import disks, remote
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    for node in cluster.nodes:
        disk = cluster.disk(node)
        if cluster.remote:
            make = Step(f"make {disk} on {cluster.uri}", remote.create_disk, cluster, virt, node,
                        changes=cluster)
            exists = (uptodate(remote.disk_exists), [cluster, virt, node], {})
            remove = remote.remove_volume
        else:
            make = Step(f"make {disk}", disks.create, cluster, node, changes=cluster)
            exists = disk.exists
            remove = disks.remove_file
        yield {
            "basename": "disk", "name": node.name,
            "doc": f"{node.name}'s disk",
            "actions": [make],
            "uptodate": [exists],
            "task_dep": ["preflight", "fam"] + (["image"] if node.is_original else ["freeze"]),
            "clean": [CleanStep(f"remove {disk} if dali made it and no domain uses it", remove, cluster,
                                virt, disk, changes=cluster)],
        }
