"""The libvirt network the nodes share (the seed's "ivp"): its XML, and keeping it defined,
started and autostarted."""

from __future__ import annotations

from libvirt import VIR_NETWORK_XML_INACTIVE

from dali.cluster import Cluster
from dali.marks import MARK_NS
from dali.render import render, write_if_changed
from dali.reporter import log
from dali.virt import Libvirt

TEMPLATE = "network.xml.j2"


def network_xml(cluster: Cluster) -> str:
    return render(TEMPLATE, net=cluster.network, uuid=cluster.network_uuid,
                  tag=cluster.tag, mark_ns=MARK_NS)


def is_live(cluster: Cluster, virt: Libvirt) -> bool:
    net = virt.network(cluster.network.name)
    return bool(net and net.isActive() and net.autostart())


def ensure(cluster: Cluster, virt: Libvirt) -> None:
    name = cluster.network.name
    xml = network_xml(cluster)
    write_if_changed(cluster.network_xml, xml)
    existing = virt.network(name)  # raises if a foreign network has the name
    before = existing.XMLDesc(VIR_NETWORK_XML_INACTIVE) if existing else None
    net = virt.define_network(xml)
    if before and net.isActive() and net.XMLDesc(VIR_NETWORK_XML_INACTIVE) != before:
        # A running network keeps its old settings until restarted, which cuts the nodes off.
        log(f"network {name}: new settings take effect once it is restarted "
            f"(virsh net-destroy {name}; doit)")
    if not net.isActive():
        net.create()
    net.setAutostart(True)


def remove(cluster: Cluster, virt: Libvirt, dryrun: bool = False) -> None:
    name = cluster.network.name
    net = virt.network(name)
    if net is None:
        return
    if dryrun:
        log(f"would remove network {name}")
        return
    if net.isActive():
        net.destroy()
    net.undefine()
    cluster.network_xml.unlink(missing_ok=True)
    log(f"network {name}: removed")
