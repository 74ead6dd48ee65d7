"""Stage: every clone defined, the original prepared, removed nodes pruned, ssh_config and hosts
written (the default target)."""

from __future__ import annotations

from dali.cluster import Cluster
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "clone",
        "doc": "the whole cluster: the original prepared, every clone defined (the default)",
        "actions": None,
        "task_dep": ["original", "golden", "prune", "access", "fs", "snapshot-store"]
                    + [f"define:{n.name}" for n in cluster.clone_nodes],
    }
