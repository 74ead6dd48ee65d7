"""Host checks that must pass before dali creates anything, each failure naming its fix; and,
as preflight is the root of the task graph and so the last task doit clean reaches, the sweep
of whatever of the cluster is left.

tasks/preflight.py runs them as the first task of the graph, so a host that cannot work never
gets half a cluster. They are cheap enough to repeat on every `doit`.
"""

from __future__ import annotations

import os
import shutil
import stat

from dali import cleaning, network
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.storage import Storage
from dali.virt import Libvirt


def problem(cluster: Cluster, files: Storage, virt: Libvirt) -> str | None:
    """The first thing that stops dali on this host, as one line naming the fix; None if none.
    Checks stop at the first problem: a later one often follows from it (no libvirtd, no dir)."""
    try:
        virt.conn
        # A domain or network with one of our names that another cluster (or someone else)
        # made: refused before anything of ours exists, never adopted.
        virt.network(cluster.network.name)
        for node in cluster.nodes:
            virt.domain(node.name)
    except DaliError as e:
        return str(e)
    # Before anything is made, not by the network task: by then state/<tag>/ would exist.
    return network.subnet_problem(cluster, virt) or files.problem()  # files: dali/storage/


def make_state_dir(cluster: Cluster) -> None:
    """state/<tag>/ holds the cluster's private ssh key: root's only."""
    cluster.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cluster.state_dir, 0o700)


def has_state_dir(cluster: Cluster) -> bool:
    try:
        return stat.S_IMODE(cluster.state_dir.stat().st_mode) == 0o700
    except FileNotFoundError:
        return False


# --- the end of doit clean ---------------------------------------------------------------------

def sweep(cluster: Cluster, files: Storage, dryrun: bool) -> None:
    """preflight is the root of the graph, so `doit clean` reaches it last: remove whatever of
    this cluster's files is still there (a pruned node's disk, an image file), and the place
    they live in if dali made it (Storage.sweep), then the cluster's state/ folder."""
    files.sweep(dryrun)
    if cluster.state_dir.exists():
        if not dryrun:
            shutil.rmtree(cluster.state_dir)
        cleaning.said("state directory", cluster.state_dir, dryrun)
