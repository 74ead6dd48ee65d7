"""Stage: each node's identity disk (its ssh host key, address, resolver and the cluster's key
that root accepts), written before the node is defined and rewritten when its address,
resolver or the cluster's key changes; the host key is kept (dali/identity_disk.py). Not made for a user's own image
(image.path), which keeps its own."""

from __future__ import annotations

from dali import identity_disk
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    if not identity_disk.used(cluster, files):
        return
    yield {"basename": "identity", "name": None,
           "doc": "each node's identity disk: its ssh host key, address and resolver"}
    for node in cluster.nodes:
        disk = identity_disk.path(cluster, node)
        yield {
            "basename": "identity", "name": node.name,
            "doc": f"{node.name}'s identity disk",
            "actions": [Step(f"write {disk}{files.where}", identity_disk.ensure, cluster, files, virt, node,
                             changes=cluster)],
            "uptodate": [(uptodate(identity_disk.is_current), [cluster, files, virt, node], {})],
            "task_dep": ["preflight", "network", "image:sshkey"],
            "clean": [CleanStep(f"remove {disk}{files.where} if dali made it and no domain uses it",
                                files.remove, disk, changes=cluster)],
        }
