"""The libvirt network the nodes share (the seed's "ivp"): which subnet, every node's fixed
address and name, its XML, and keeping it defined, started and autostarted.

Unless network.address is set, the subnet is picked when the network is first defined: the
seed's 192.168.7.0/24 if no other libvirt network or host route uses it, else the first free
192.168.N.0/24 from N = 100 up. libvirt keeps it from then on: the definition of our network is
where the choice is read back from, so a second cluster gets a subnet of its own with nothing
set but DALI_TAG and DALI_DIR, and a re-run never moves a cluster's addresses.

Every node has a fixed address, kept the same way: a DHCP host entry (its MAC, name and
address) and a DNS host entry in the network's definition, the first free address of the DHCP
range when the node is first seen. A node added while the network runs gets its entries through
libvirt's live update, so no other node loses its address or its connection. The network's DNS
domain is the tag, handed out by DHCP as the search domain: on any node `ping ivpb` works.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import libvirt
from libvirt import VIR_NETWORK_XML_INACTIVE

from dali import cleaning, libvirtd
from dali.cluster import Cluster, is_remote
from dali.errors import DaliError
from dali.lock import host_lock
from dali.marks import MARK_NS
from dali.render import render, write_if_changed
from dali.reporter import log
from dali.settings import dhcp_range
from dali.virt import Libvirt

TEMPLATE = "network.xml.j2"


class Addresses(NamedTuple):
    address: str  # the host's, on the bridge
    prefix: int
    dhcp_start: str
    dhcp_end: str


_LOOK = object()  # plan's existing network: look it up


def plan(cluster: Cluster, virt: Libvirt, existing=_LOOK) -> Addresses:
    """The network's addresses: as configured, as our existing network has them, or picked free.
    existing: the network as the caller just looked it up (None: there is none)."""
    net = cluster.network
    if existing is _LOOK:
        existing = virt.network(net.name)
    if net.address:
        if existing is None:
            _refuse_a_taken_subnet(cluster, virt)
        return Addresses(net.address, net.prefix, *dhcp_range(net.address, net.prefix,
                                                                net.dhcp_start or "", net.dhcp_end or ""))
    if existing is not None:
        ip = ET.fromstring(existing.XMLDesc(0)).find("ip")  # the same in the inactive XML
        dhcp = ip.find("dhcp/range")
        return Addresses(ip.get("address"), int(ip.get("prefix")), dhcp.get("start"), dhcp.get("end"))
    subnet = pick_subnet(net.prefix, [subnet for _, subnet in _taken_subnets(cluster, virt)])
    host = str(subnet.broadcast_address - 1)
    return Addresses(host, net.prefix, *dhcp_range(host, net.prefix))


def _refuse_a_taken_subnet(cluster: Cluster, virt: Libvirt) -> None:
    """network.address's subnet, checked before the network is defined: libvirt would define
    it, then refuse to start it, and leave a network behind."""
    found = subnet_problem(cluster, virt)
    if found:
        raise DaliError(found)


def subnet_problem(cluster: Cluster, virt: Libvirt) -> str | None:
    """Why network.address cannot be this cluster's (another network or a route has its subnet),
    for a network not made yet; None if it can, or dali picks one, or the network is there."""
    if not cluster.network.address or virt.network(cluster.network.name) is not None:
        return None
    wanted = ipaddress.IPv4Network(f"{cluster.network.address}/{cluster.network.prefix}", strict=False)
    for what, subnet in _taken_subnets(cluster, virt):
        if wanted.overlaps(subnet):
            return (f"network.address = {cluster.network.address}: {wanted} overlaps {subnet} of {what}: "
                    "pick a free subnet, or leave network.address empty for dali to pick one")
    return None


def _taken_subnets(cluster: Cluster, virt: Libvirt) -> list[tuple[str, ipaddress.IPv4Network]]:
    """(whose, subnet) of every subnet a new network must not overlap: the other libvirt
    networks', and the routes of this host and of libvirtd's network namespace."""
    taken = [(f"libvirt network {name}", subnet) for name, subnet in virt.network_subnets().items()
             if name != cluster.network.name]
    if not is_remote(cluster.uri):  # this machine's own routes matter to a libvirtd that shares them
        taken += [("a route of this host", r) for r in host_routes()]
    table = libvirtd.route_table(cluster.uri)  # None: another machine's, which dali cannot read
    return taken + ([("a route in libvirtd's network namespace", r) for r in host_routes(table)] if table else [])


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


# --- fixed addresses ------------------------------------------------------------------------

class Host(NamedTuple):
    mac: str
    name: str
    ip: str


def hosts_of(net) -> list[Host]:
    """The DHCP host entries of a network (its running definition, where libvirt keeps them)."""
    found = ET.fromstring(net.XMLDesc(0)).findall("ip/dhcp/host")
    return [Host(h.get("mac"), h.get("name"), h.get("ip")) for h in found if h.get("mac")]


def address_table(cluster: Cluster, addresses: Addresses, known: list[Host]) -> list[Host]:
    """Every configured node's entry: the one it has (by MAC), or the first free address of the
    DHCP range. Entries of nodes no longer configured keep their addresses (their disks may
    come back) until the node is removed."""
    by_mac = {h.mac: h for h in known}
    taken = {h.ip for h in known}
    start, end = (int(ipaddress.IPv4Address(a)) for a in (addresses.dhcp_start, addresses.dhcp_end))
    table = list(known)
    for node in cluster.nodes:
        if node.mac in by_mac:
            continue
        free = next((ip for ip in range(start, end + 1) if str(ipaddress.IPv4Address(ip)) not in taken), None)
        if free is None:
            raise DaliError(f"network {cluster.network.name}: no free address left in the DHCP range "
                            f"{addresses.dhcp_start}-{addresses.dhcp_end} for {node.name}: widen it "
                            "(network.dhcp_start/dhcp_end) or remove nodes")
        host = Host(node.mac, node.name, str(ipaddress.IPv4Address(free)))
        table.append(host)
        taken.add(host.ip)
    return table


def addresses_of(cluster: Cluster, virt: Libvirt) -> dict[str, str]:
    """Each node's fixed address, by name, as the network holds them now ({} without a network)."""
    net = virt.network(cluster.network.name)
    return {} if net is None else {h.name: h.ip for h in hosts_of(net)}


def node_address(cluster: Cluster, virt: Libvirt, name: str) -> tuple[str, int, str] | None:
    """A node's fixed address, the subnet's prefix and the host's address on the bridge, from
    one reading of the network's definition; None without a network or an entry for the node."""
    net = virt.network(cluster.network.name)
    if net is None:
        return None
    root = ET.fromstring(net.XMLDesc(0))
    ip = root.find("ip")
    found = next((h.get("ip") for h in root.findall("ip/dhcp/host") if h.get("name") == name), None)
    return None if found is None else (found, int(ip.get("prefix")), ip.get("address"))


def _missing_hosts(cluster: Cluster, net) -> bool:
    known = {h.mac for h in hosts_of(net)}
    return any(node.mac not in known for node in cluster.nodes)


def _add_host(net, host: Host) -> None:
    """Add a host's DHCP and DNS entries to the running network and to its definition."""
    flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    if net.isActive():
        flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
    net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
               -1, render("dhcp-host.xml.j2", host=host), flags)
    net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, libvirt.VIR_NETWORK_SECTION_DNS_HOST,
               -1, render("dns-host.xml.j2", host=host), flags)


def forget_host(cluster: Cluster, virt: Libvirt, name: str) -> None:
    """Drop a removed node's entries, so its address is free again."""
    net = virt.network(cluster.network.name)
    host = next((h for h in hosts_of(net) if h.name == name), None) if net else None
    if host is None:
        return
    flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    if net.isActive():
        flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
    net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
               -1, render("dhcp-host.xml.j2", host=host), flags)
    net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_DNS_HOST,
               -1, render("dns-host.xml.j2", host=host), flags)


# --- the network itself ----------------------------------------------------------------------

def network_xml(cluster: Cluster, addresses: Addresses, hosts: list[Host] = ()) -> str:
    return render(TEMPLATE, net=cluster.network, ip=addresses, hosts=hosts, uuid=cluster.network_uuid,
                  mark=cluster.mark, mark_ns=MARK_NS, domain=cluster.tag, bridge=bridge_name(cluster))


def bridge_name(cluster: Cluster) -> str:
    """The network's bridge: "dali" and 10 hex digits of the network's uuid (derived from the
    cluster), within Linux's 15 characters, and the same for the same cluster every time."""
    return "dali" + str(cluster.network_uuid).replace("-", "")[:10]


def is_live(cluster: Cluster, virt: Libvirt) -> bool:
    net = virt.network(cluster.network.name)
    return bool(net and net.isActive() and net.autostart() and not _missing_hosts(cluster, net))


def ensure(cluster: Cluster, virt: Libvirt) -> None:
    # Host-wide while a subnet is picked and taken: two clusters made at once must not pick the same one.
    with host_lock("network"):
        _ensure(cluster, virt)


def _settings(xml: str) -> str:
    """A network's definition without what libvirt makes up afresh at every define: the bridge's
    MAC address (a DHCP host's is an attribute, <host mac=...>, and stays)."""
    return re.sub(r"\s*<mac address='[^']*'/>", "", xml)


def _ensure(cluster: Cluster, virt: Libvirt) -> None:
    name = cluster.network.name
    existing = virt.network(name)  # raises if a foreign network has the name
    addresses = plan(cluster, virt, existing)
    hosts = address_table(cluster, addresses, hosts_of(existing) if existing else [])
    xml = network_xml(cluster, addresses, hosts)
    write_if_changed(cluster.network_xml, xml)
    created = existing is None
    if created:
        net = virt.define_network(xml)
    else:
        # Nodes added to a network that runs: their entries go in live, nobody is cut off.
        for host in hosts[len(hosts_of(existing)):]:
            _add_host(existing, host)
            log(f"{host.name}: address {host.ip}")
        before = _settings(existing.XMLDesc(VIR_NETWORK_XML_INACTIVE))
        net = virt.define_network(xml)
        if net.isActive() and _settings(net.XMLDesc(VIR_NETWORK_XML_INACTIVE)) != before:
            # A running network keeps its old settings until restarted, which cuts the nodes off.
            log(f"network {name}: new settings take effect once it is restarted "
                f"(virsh net-destroy {name}; doit)")
    if not net.isActive():
        try:
            virt.start_network(net)
        except DaliError:
            if created:  # a refused run leaves no network behind, nor its file
                net.undefine()
                cluster.network_xml.unlink(missing_ok=True)
            raise
    net.setAutostart(True)


def remove(cluster: Cluster, virt: Libvirt, dryrun: bool = False) -> None:
    name = cluster.network.name
    net = virt.network(name)
    if net is None:
        return
    if not dryrun:
        if net.isActive():
            net.destroy()
        net.undefine()
        cluster.network_xml.unlink(missing_ok=True)
    cleaning.said("network", name, dryrun)
