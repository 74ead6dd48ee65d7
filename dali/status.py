"""`doit status`: the cluster at a glance, from libvirt and from the guest agents that answer.

One row per node: its state, fixed address, the shared device as the node sees it (when it runs),
its disk and how much that has grown (the node's own qcow2: for a linked clone, what it wrote
since it was cloned), and its uptime. Then the network and the FAM. It boots nothing and waits
for nothing: an agent that does not answer within a second or two shows "-". A node that runs
but is not yet usable as `doit start` leaves it (its device there, ssh listening) is "booting".
"""

from __future__ import annotations

import ipaddress
import os
import time
import stat
import xml.etree.ElementTree as ET

import libvirt

from dali import access, fam, guest, image, network
from dali.cluster import Cluster, Node
from dali.domain import gdb_socket
from dali.errors import DaliError
from dali.fanout import each
from dali.lifecycle import started_at, usable_says_the_node
from dali.pool import Pool
from dali.virt import Libvirt

STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
          libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_CRASHED: "crashed",
          libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended"}


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600}h" if s >= 86400 else \
        f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def node_row(cluster: Cluster, virt: Libvirt, node: Node, addresses: dict[str, str]) -> dict:
    row = {"node": node.name, "state": "undefined", "address": addresses.get(node.name, "-"),
           "pmem": "-", "disk": "-", "uptime": "-"}
    disk = cluster.disk(node)
    if cluster.remote:
        vol = Pool(cluster, virt).volume(disk.name)
        if vol is not None:
            row["disk"] = f"{disk.name} ({_mib(vol.info()[2])})"  # its allocation there
    elif disk.exists():
        row["disk"] = f"{disk.name} ({_mib(disk.stat().st_blocks * 512)})"
    dom = virt.domain(node.name)
    if dom is None:
        return row
    row["state"] = STATES.get(dom.state()[0], "other")
    from dali import evidence  # here: a no-op doit loads status, and need not load this
    why = evidence.panicked(cluster, virt, dom)
    if why:
        row["state"], row["why"] = "panicked", why
        return row
    if row["state"] != "running":
        return row
    started = started_at(cluster, virt, dom)
    if started is not None:
        row["uptime"] = _duration(time.time() - started)
    silent = not virt.agent_answers(dom)
    if silent or not usable_says_the_node(cluster, virt, dom):
        # Booting: not yet what doit start waits for (its device, ssh). A node silent for longer
        # than a boot may take is not booting any more: it runs, and its agent is silent.
        if started is None or time.time() - started < cluster.boot_timeout:
            row["state"] = "booting"
        row["pmem"] = "(agent silent)" if silent else "-"
        return row
    try:
        ns = guest.namespace(virt, dom, wait=0)
        row["pmem"] = f"{ns.get('mode')} {ns.get('size')}"
    except (DaliError, libvirt.libvirtError):
        row["pmem"] = "?"  # a busy node: status waits for nothing
    return row


def status(cluster: Cluster, virt: Libvirt) -> list[dict]:
    """Print the table; return the node rows."""
    addresses = network.addresses_of(cluster, virt)
    rows = each([(n, None) for n in cluster.nodes], lambda n, _: node_row(cluster, virt, n, addresses))
    running = [(n, virt.domain(n.name)) for n, r in zip(cluster.nodes, rows)
               if r["pmem"] not in ("-", "(agent silent)", "?")]
    if running:
        access.learn_host_keys(cluster, virt, running)

    cols = ["node", "state", "address", "pmem", "disk", "uptime"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        if "why" in r:
            from dali import evidence
            print(f"{r['node']}: panicked: {r['why']}: doit start {r['node']} boots it again, its "
                  f"console and memory kept first in {evidence.crash_dir(cluster)}/")
    print(_network_line(cluster, virt))
    print(_fam_line(cluster))
    if cluster.image_kernel and image.node_image_is_kept(cluster, image.wanted_tarball(cluster)):
        print(f"image {cluster.image_dir / 'base.qcow2'}: built from an older recipe (a dali upgrade, "
              "or image.* settings changed); kept, because the nodes' disks are built on it: doit "
              "clean, then doit, moves to the new one")
    if cluster.gdb:
        for node in cluster.nodes:
            sock = gdb_socket(cluster, node)
            print(f"gdb {node.name}: gdb vmlinux -ex 'target remote {sock}'"
                  + ("" if sock.exists() else "  (while it runs)"))
    return rows


def _network_line(cluster: Cluster, virt: Libvirt) -> str:
    net = virt.network(cluster.network.name)
    if net is None:
        return f"network {cluster.network.name}: not defined"
    ip = ET.fromstring(net.XMLDesc(0)).find("ip")
    subnet = ipaddress.IPv4Network(f"{ip.get('address')}/{ip.get('prefix')}", strict=False)
    kind = "nat" if ET.fromstring(net.XMLDesc(0)).find("forward") is not None else "isolated"
    return (f"network {net.name()}: {subnet}, host {ip.get('address')}, "
            f"{'active' if net.isActive() else 'inactive'}, {kind}")


def _fam_line(cluster: Cluster) -> str:
    path = cluster.fam_path
    if not fam.exists(cluster):
        return f"FAM {path}: not made yet"
    ns = fam.held(cluster)
    holds = f"{ns['mode']} namespace {ns['uuid']}" if ns["mode"] != "raw" else "no namespace yet"
    if cluster.remote:
        return f"FAM {path} on {cluster.uri}: {cluster.fam_size} bytes, {holds}"
    st = os.stat(path)
    return f"FAM {path}: {st.st_size} bytes, mode {stat.S_IMODE(st.st_mode):04o}, {holds}"
