"""Nodes whose suffix left the config.

prune (every `doit`): a shut-off node is undefined and its disk kept, and said so; a running
node is left alone. Its disk holds the node's work, and a suffix can leave the config by
mistake (a typo in DALI_CLONES), so deleting it takes an explicit command: `doit remove:NODE`
for one node, or `doit clean` for the whole cluster.

Found by dali's marks (in libvirt and on the disks), not by doit's memory, so a node made by an
earlier config is found too.
"""

from __future__ import annotations

from dali import cleaning, identity_disk, network
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt


def stale_domains(cluster: Cluster, virt: Libvirt) -> dict:
    wanted = {n.name for n in cluster.nodes}
    return {name: dom for name, dom in virt.our_domains().items() if name not in wanted}


def left_over(cluster: Cluster, files: Storage) -> list[str]:
    """Names of nodes that left the config but whose disk is still there (ours): what
    remove:NODE can delete. Read cheaply: names and marks (Storage.our_files)."""
    wanted = {n.name for n in cluster.nodes}
    try:
        ours = files.our_files()
    except DaliError:
        return []  # not reachable: no remove:NODE tasks this time (every other task says why)
    found = []
    for path in ours:
        if not (path.name.startswith(cluster.tag) and path.name.endswith(".qcow2")):
            continue
        name = path.name[:-len(".qcow2")]
        if name not in wanted and name[len(cluster.tag):].isalnum():
            found.append(name)
    return found


def undefine_stale(cluster: Cluster, virt: Libvirt) -> None:
    for name, dom in stale_domains(cluster, virt).items():
        if virt.is_running(dom):
            log(f"{name}: no longer in the config but running; left alone "
                f"(shut it down and run doit again to undefine it)")
            continue
        dom.undefine()
        log(f"{name}: no longer in the config: undefined; its disk {cluster.disk(name)} is kept "
            f"(doit remove:{name} deletes it)")


def remove(cluster: Cluster, files: Storage, virt: Libvirt, name: str, dryrun: bool = False) -> None:
    """`doit remove:NODE`: undefine the node (shut off only) and delete its disk."""
    dom = virt.domain(name)
    if dom is not None:
        if virt.is_running(dom) and not dryrun:  # (doit clean -n: clean shuts it down first)
            raise DaliError(f"{name} is running: shut it down first (virsh shutdown {name}), "
                            f"then doit remove:{name}")
        if not dryrun:
            dom.undefine()
        cleaning.said("node", name, dryrun)
    files.remove(cluster.disk(name), dryrun)
    files.remove(identity_disk.path(cluster, name), dryrun)  # its host key
    if not dryrun and not files.exists(cluster.disk(name)):
        network.forget_host(cluster, virt, name)  # its address is free again
        log(f"{name}: removed")


def remove_all_stale(cluster: Cluster, files: Storage, virt: Libvirt, dryrun: bool = False) -> None:
    """`doit clean`: every node that left the config, running ones shut down first."""
    for name, dom in stale_domains(cluster, virt).items():
        if virt.is_running(dom) and not dryrun:
            log(f"{name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}")
        remove(cluster, files, virt, name, dryrun)  # with -n, its disks are listed too, as clean removes them
    still_defined = stale_domains(cluster, virt)
    for name in left_over(cluster, files):
        if name not in still_defined:
            remove(cluster, files, virt, name, dryrun)
