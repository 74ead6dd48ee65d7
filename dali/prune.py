"""Nodes whose suffix left the config.

prune (every `doit`): a shut-off node is undefined and its disk kept, and said so; a running
node is left alone. Its disk holds the node's work, and a suffix can leave the config by
mistake (a typo in DALI_CLONES), so deleting it takes an explicit command: `doit remove:NODE`
for one node, or `doit clean` for the whole cluster.

Found by dali's marks (in libvirt and on the disks), not by doit's memory, so a node made by an
earlier config is found too.
"""

from __future__ import annotations

from dali import cleaning, disks, identity_disk, marks, network, remote
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.pool import Pool
from dali.reporter import log
from dali.virt import Libvirt


def stale_domains(cluster: Cluster, virt: Libvirt) -> dict:
    wanted = {n.name for n in cluster.nodes}
    return {name: dom for name, dom in virt.our_domains().items() if name not in wanted}


def left_over(cluster: Cluster) -> list[str]:
    """Names of nodes that left the config but whose disk is still here (ours): what
    remove:NODE can delete. Read from the data directory, cheaply (names and xattrs)."""
    wanted = {n.name for n in cluster.nodes}
    if cluster.remote:
        try:  # the volumes the pool's marker lists: one question to the libvirt host
            listed = (Pool(cluster, Libvirt.of(cluster)).marker() or {}).get("volumes", {})
        except DaliError:
            return []  # not reachable: no remove:NODE tasks this time (every other task says why)
        candidates = [(cluster.data_dir / v, True) for v in sorted(listed)]
    elif cluster.data_dir.is_dir():
        candidates = [(path, None) for path in sorted(cluster.data_dir.glob(f"{cluster.tag}*.qcow2"))]
    else:
        return []
    found = []
    for path, ours in candidates:
        if not (path.name.startswith(cluster.tag) and path.name.endswith(".qcow2")):
            continue
        name = path.name[:-len(".qcow2")]
        if (name not in wanted and name[len(cluster.tag):].isalnum()
                and (ours or marks.is_ours(path, cluster))):
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


def remove(cluster: Cluster, virt: Libvirt, name: str, dryrun: bool = False) -> None:
    """`doit remove:NODE`: undefine the node (shut off only) and delete its disk."""
    dom = virt.domain(name)
    if dom is not None:
        if virt.is_running(dom) and not dryrun:  # (doit clean -n: clean shuts it down first)
            raise DaliError(f"{name} is running: shut it down first (virsh shutdown {name}), "
                            f"then doit remove:{name}")
        if not dryrun:
            dom.undefine()
        cleaning.said("node", name, dryrun)
    if cluster.remote:
        for path in (cluster.disk(name), identity_disk.path(cluster, name)):
            remote.remove_volume(cluster, virt, path, dryrun)
        gone = Pool(cluster, virt).volume(cluster.disk(name).name) is None
    else:
        disks.remove_file(cluster, virt, cluster.disk(name), dryrun)
        disks.remove_file(cluster, virt, identity_disk.path(cluster, name), dryrun)  # its host key
        gone = not cluster.disk(name).exists()
    if not dryrun and gone:
        network.forget_host(cluster, virt, name)  # its address is free again
        log(f"{name}: removed")


def remove_all_stale(cluster: Cluster, virt: Libvirt, dryrun: bool = False) -> None:
    """`doit clean`: every node that left the config, running ones shut down first."""
    for name, dom in stale_domains(cluster, virt).items():
        if virt.is_running(dom) and not dryrun:
            log(f"{name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}")
        remove(cluster, virt, name, dryrun)  # with -n, its disks are listed too, as clean removes them
    still_defined = stale_domains(cluster, virt)
    for name in left_over(cluster):
        if name not in still_defined:
            remove(cluster, virt, name, dryrun)
