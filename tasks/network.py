"""Stage 1: the libvirt network the nodes share (the seed's "ivp"), defined, started, autostarted."""

from __future__ import annotations

from doit.tools import config_changed
from libvirt import VIR_NETWORK_XML_INACTIVE

from tasks import errors
from tasks.config import Cluster
from tasks.render import render, template_path, write_if_changed
from tasks.reporter import log
from tasks.virt import MARK_NS, Libvirt

TEMPLATE = "network.xml.j2"


def network_xml(cluster: Cluster) -> str:
    return render(TEMPLATE, net=cluster.network, uuid=cluster.network_uuid,
                  tag=cluster.tag, mark_ns=MARK_NS)


def task(cluster: Cluster, virt: Libvirt) -> dict:
    name = cluster.network.name
    xml_file = cluster.state_dir / "network.xml"

    @errors.uptodate
    def live() -> bool:
        net = virt.network(name)
        return bool(net and net.isActive() and net.autostart())

    @errors.action
    def create():
        xml = network_xml(cluster)
        write_if_changed(xml_file, xml)
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

    def remove():
        net = virt.network(name)
        if net is None:
            return
        if net.isActive():
            net.destroy()
        net.undefine()
        xml_file.unlink(missing_ok=True)

    return {
        "actions": [create],
        "file_dep": [template_path(TEMPLATE)],
        "task_dep": ["preflight"],
        "uptodate": [config_changed(repr(cluster.network)), live],
        "clean": [errors.action(remove)],
        "verbosity": 2,
    }
