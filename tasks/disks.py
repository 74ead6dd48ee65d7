"""Stage: each node's disk. A node's disk holds its work and is never remade: only its
existence counts."""

from __future__ import annotations

from dali import disks, marks
from dali.cluster import Cluster
from dali.errors import Step
from dali.reporter import log
from dali.virt import Libvirt


def remove(cluster: Cluster, name: str, dryrun: bool) -> None:
    marks.remove_if_ours(cluster.disk(name), cluster.tag, log, dryrun)


def gen_tasks(cluster: Cluster, virt: Libvirt):
    for node in cluster.nodes:
        disk = cluster.disk(node)
        yield {
            "basename": "disk", "name": node.name,
            "doc": f"{node.name}'s disk",
            "actions": [Step(f"make {disk}", disks.create, cluster, node)],
            "uptodate": [disk.exists],
            "task_dep": ["preflight", "fam"] + (["image"] if node.is_original else ["freeze"]),
            "clean": [Step(f"remove {disk} if dali made it", remove, cluster, node.name)],
        }
