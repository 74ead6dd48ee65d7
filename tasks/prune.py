"""Stage: remove the nodes whose suffix left the config (dali/prune.py)."""

from __future__ import annotations

from dali import prune
from dali.cluster import Cluster
from dali.errors import Step, uptodate
from dali.virt import Libvirt


def prune_stale(cluster: Cluster, virt: Libvirt) -> None:
    for name, dom in prune.stale_nodes(cluster, virt).items():
        prune.remove_node(cluster, virt, name, dom, force=False)


def remove_all_stale(cluster: Cluster, virt: Libvirt, dryrun: bool) -> None:
    for name, dom in prune.stale_nodes(cluster, virt).items():
        prune.remove_node(cluster, virt, name, dom, force=True, dryrun=dryrun)


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "prune",
        "doc": "remove nodes that left the config",
        "actions": [Step("remove nodes that left the config", prune_stale, cluster, virt)],
        "uptodate": [uptodate(lambda: not prune.stale_nodes(cluster, virt))],
        "task_dep": ["preflight", "network"],
        "clean": [Step(f"remove every node of cluster {cluster.tag} that left the config",
                       remove_all_stale, cluster, virt)],
    }
