"""Nodes whose suffix left the config: removed if shut off, reported and kept if running.

Found by dali's mark in libvirt (tasks/virt.py), not by doit's memory, so a node made by an
earlier checkout or config is found too. `doit clean` removes every marked node this way.
"""

from __future__ import annotations

from tasks import errors, owned
from tasks.config import Cluster
from tasks.reporter import log
from tasks.virt import Libvirt


def stale_nodes(cluster: Cluster, virt: Libvirt) -> dict:
    wanted = {n.name for n in cluster.nodes}
    return {name: dom for name, dom in virt.our_domains().items() if name not in wanted}


def remove_node(cluster: Cluster, virt: Libvirt, name: str, dom, force: bool) -> None:
    """Undefine the domain and delete its disk (dali's only). Running nodes only when force."""
    if virt.is_running(dom):
        if not force:
            log(f"{name}: no longer in the config but running; left alone "
                "(shut it down and run doit again to remove it)")
            return
        log(f"{name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}")
    dom.undefine()
    owned.remove_if_ours(cluster.disk(name), cluster.tag, log)
    log(f"{name}: removed (no longer in the config)")


def task(cluster: Cluster, virt: Libvirt) -> dict:
    def prune():
        for name, dom in stale_nodes(cluster, virt).items():
            remove_node(cluster, virt, name, dom, force=False)

    def remove_all():
        for name, dom in stale_nodes(cluster, virt).items():
            remove_node(cluster, virt, name, dom, force=True)

    return {
        "actions": [errors.action(prune)],
        "uptodate": [errors.uptodate(lambda: not stale_nodes(cluster, virt))],
        "task_dep": ["preflight", "network"],
        "clean": [errors.action(remove_all)],
        "verbosity": 2,
    }
