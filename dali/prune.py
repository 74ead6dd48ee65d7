"""Nodes whose suffix left the config: removed if shut off, reported and kept if running.

Found by dali's mark in libvirt (dali/virt.py), not by doit's memory, so a node made by an
earlier checkout or config is found too.
"""

from __future__ import annotations

from dali import marks
from dali.cluster import Cluster
from dali.reporter import log
from dali.virt import Libvirt


def stale_nodes(cluster: Cluster, virt: Libvirt) -> dict:
    wanted = {n.name for n in cluster.nodes}
    return {name: dom for name, dom in virt.our_domains().items() if name not in wanted}


def remove_node(cluster: Cluster, virt: Libvirt, name: str, dom, force: bool, dryrun: bool = False) -> None:
    """Undefine the domain and delete its disk (dali's only). Running nodes only when force."""
    if virt.is_running(dom) and not force:
        log(f"{name}: no longer in the config but running; left alone "
            "(shut it down and run doit again to remove it)")
        return
    if dryrun:
        log(f"would remove node {name} and its disk {cluster.disk(name)}")
        return
    if virt.is_running(dom):
        log(f"{name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}")
    dom.undefine()
    marks.remove_if_ours(cluster.disk(name), cluster.tag, log)
    log(f"{name}: removed (no longer in the config)")
