"""The libvirt network the nodes share (the seed's "ivp"): which subnet, its XML, and keeping
it defined, started and autostarted.

Unless network.address is set, the subnet is picked when the network is first defined: the
seed's 192.168.7.0/24 if no other libvirt network or host route uses it, else the first free
192.168.N.0/24 from N = 100 up. libvirt keeps it from then on: the definition of our network is
where the choice is read back from, so a second cluster gets a subnet of its own with nothing
set but DALI_TAG and DALI_DIR, and a re-run never moves a cluster's addresses.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from libvirt import VIR_NETWORK_XML_INACTIVE

from dali.cluster import Cluster
from dali.errors import DaliError
from dali.marks import MARK_NS
from dali.render import render, write_if_changed
from dali.reporter import log
from dali.settings import dhcp_range
from dali.virt import Libvirt

TEMPLATE = "network.xml.j2"


@dataclass(frozen=True)
class Addresses:
    address: str  # the host's, on the bridge
    prefix: int
    dhcp_start: str
    dhcp_end: str


def plan(cluster: Cluster, virt: Libvirt) -> Addresses:
    """The network's addresses: as configured, as our existing network has them, or picked free."""
    net = cluster.network
    if net.address:
        return Addresses(net.address, net.prefix, *dhcp_range(net.address, net.prefix,
                                                                net.dhcp_start or "", net.dhcp_end or ""))
    existing = virt.network(net.name)
    if existing is not None:
        ip = ET.fromstring(existing.XMLDesc(0)).find("ip")  # the same in the inactive XML
        dhcp = ip.find("dhcp/range")
        return Addresses(ip.get("address"), int(ip.get("prefix")), dhcp.get("start"), dhcp.get("end"))
    subnet = pick_subnet(net.prefix, list(virt.network_subnets().values()) + host_routes())
    host = str(subnet.broadcast_address - 1)
    return Addresses(host, net.prefix, *dhcp_range(host, net.prefix))


def pick_subnet(prefix: int, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The seed's 192.168.7.0 first, then 192.168.100.0 and up, each with the given prefix."""
    candidates = dict.fromkeys(ipaddress.IPv4Network(f"192.168.{n}.0/{prefix}", strict=False)
                               for n in [7, *range(100, 255)])
    for candidate in candidates:
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise DaliError("no free subnet in 192.168.0.0/16 for the network: set network.address "
                    "(and network.prefix) to a free one")


def host_routes(route_table: Path = Path("/proc/net/route")) -> list[ipaddress.IPv4Network]:
    """The subnets this host routes to directly (its own interfaces), but the default route."""
    routes = []
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return routes
    for line in lines:
        fields = line.split()
        dest, mask = (ipaddress.IPv4Address(bytes.fromhex(f)[::-1]) for f in (fields[1], fields[7]))
        if int(mask):
            routes.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return routes


def network_xml(cluster: Cluster, addresses: Addresses) -> str:
    return render(TEMPLATE, net=cluster.network, ip=addresses, uuid=cluster.network_uuid,
                  mark=cluster.mark, mark_ns=MARK_NS)


def is_live(cluster: Cluster, virt: Libvirt) -> bool:
    net = virt.network(cluster.network.name)
    return bool(net and net.isActive() and net.autostart())


def ensure(cluster: Cluster, virt: Libvirt) -> None:
    name = cluster.network.name
    xml = network_xml(cluster, plan(cluster, virt))
    write_if_changed(cluster.network_xml, xml)
    existing = virt.network(name)  # raises if a foreign network has the name
    before = existing.XMLDesc(VIR_NETWORK_XML_INACTIVE) if existing else None
    net = virt.define_network(xml)
    if before and net.isActive() and net.XMLDesc(VIR_NETWORK_XML_INACTIVE) != before:
        # A running network keeps its old settings until restarted, which cuts the nodes off.
        log(f"network {name}: new settings take effect once it is restarted "
            f"(virsh net-destroy {name}; doit)")
    if not net.isActive():
        virt.start_network(net)
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
