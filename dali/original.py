"""The original node's one-off preparation (seed step 4): boot it, make its NVDIMM namespace
fsdax, shut it down for cloning.

Whether that is still to be done is read from the FAM (dali/fam.py): the fsdax info block lives
in the FAM itself, so a redefined domain needs no second reconfiguration, a new FAM does, and a
killed run loses nothing that decides it.
"""

from __future__ import annotations

from dali import fam, guest
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.virt import Libvirt


def prepared(cluster: Cluster) -> bool:
    """The FAM already holds an fsdax namespace (made by this original or by hand, as the seed)."""
    return cluster.fam_path.exists() and fam.namespace(cluster.fam_path)["mode"] == "fsdax"


def _domain(cluster: Cluster, virt: Libvirt):
    dom = virt.domain(cluster.original_node.name)
    if dom is None:
        raise DaliError(f"{cluster.original_node.name} is not defined: run doit")
    return dom


def boot(cluster: Cluster, virt: Libvirt) -> None:
    dom = _domain(cluster, virt)
    virt.start(dom)
    log(f"{dom.name()}: started; waiting for its guest agent (TCG boots take a minute)")
    took = virt.wait_for_agent(dom, cluster.boot_timeout, log)
    log(f"{dom.name()}: guest agent answered after {took:.0f} s")


def reconfigure(cluster: Cluster, virt: Libvirt) -> dict:
    """Make namespace0.0 fsdax; returns the namespace as the FAM now holds it."""
    dom = _domain(cluster, virt)
    ns = guest.namespace(virt, dom)
    log(f"{dom.name()}: {guest.NAMESPACE} is in mode {ns.get('mode')}, size {ns.get('size')}")
    if ns.get("mode") != "fsdax":
        log(f"{dom.name()}: ndctl create-namespace --reconfig={guest.NAMESPACE} --mode=fsdax --force")
        guest.reconfigure_fsdax(virt, dom)
        ns = guest.namespace(virt, dom)
    on_fam = fam.namespace(cluster.fam_path)
    if ns.get("mode") != "fsdax" or on_fam["mode"] != "fsdax" or on_fam["uuid"] != ns.get("uuid"):
        raise DaliError(f"{dom.name()}: {guest.NAMESPACE} is in mode {ns.get('mode')} after "
                        f"reconfiguring, and the FAM holds a {on_fam['mode']} namespace: see "
                        "ndctl's output in the guest")
    log(f"{dom.name()}: {guest.NAMESPACE} fsdax, size {ns['size']}, blockdev {ns.get('blockdev')}")
    return on_fam


def shutdown(cluster: Cluster, virt: Libvirt) -> None:
    dom = _domain(cluster, virt)
    how = virt.shutdown(dom, cluster.shutdown_timeout, log)
    log(f"{dom.name()}: {how}; ready for cloning")
