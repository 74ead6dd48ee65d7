"""`doit start` and `doit restart`: the nodes booted (dali/lifecycle.py), then the shared
filesystem brought up on every running node (dali/ocfs2.py, with fs.type = "ocfs2").

Its own module because the filesystem needs the power side (which nodes run and are usable)
and not the other way round: lifecycle knows nothing of OCFS2.
"""

from __future__ import annotations

from dali import lifecycle, ocfs2
from dali.cluster import Cluster
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt


def start(cluster: Cluster, files: Storage, virt: Libvirt, names=(), batch: str = "auto") -> None:
    """Boot the nodes (all, or those named: lifecycle.boot) and bring the filesystem up on every
    running node. A device holding anything but OCFS2 is refused before any node boots."""
    lifecycle.batch_size(cluster, str(batch))  # a bad --batch is refused before anything boots
    if cluster.fs.type == "ocfs2":
        ocfs2.refuse_other_data(cluster, files)  # before any node boots: a refusal changes nothing
    lifecycle.boot(cluster, files, virt, names, batch)
    if cluster.fs.type == "ocfs2":
        ocfs2.bring_up(cluster, files, virt, ocfs2.running_nodes(cluster, files, virt))


def restart(cluster: Cluster, files: Storage, virt: Libvirt, names=(), batch: str = "auto") -> None:
    """Shut the running nodes down (all, or those named) and start them again: they boot what
    their definitions say now (a rebuilt kernel, say). Shut-off nodes stay off."""
    lifecycle.batch_size(cluster, str(batch))  # a bad --batch is refused before anything is shut down
    doms = lifecycle.defined(cluster, virt, lifecycle.select(cluster, names))
    for node, dom in doms:
        lifecycle.keep_if_panicked(cluster, files, virt, node, dom)
    running = [n for n, d in doms if virt.is_running(d)]
    if not running:
        log("no node to restart: none of them runs (doit start boots them)")
        return
    lifecycle.shutdown(cluster, files, virt, [n.name for n in running])
    start(cluster, files, virt, [n.name for n in running], batch)
