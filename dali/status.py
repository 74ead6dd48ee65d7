"""`doit status`: the cluster at a glance, from libvirt and from the guest agents that answer.

One row per node: its state, fixed address, the shared device as the node sees it (when it runs),
its disk and how much that has grown (the node's own qcow2: for a linked clone, what it wrote
since it was cloned), and its uptime. Then the network and the FAM. It boots nothing and waits
for nothing: an agent that does not answer within a second or two shows "-". A node that runs
but is not yet usable as `doit start` leaves it (its device there, ssh listening) is "booting".
"""

from __future__ import annotations

import ipaddress
import time
import xml.etree.ElementTree as ET

import libvirt

from dali import access, fam, guest, image, network
from dali.cluster import Cluster, Node
from dali.domain import gdb_socket
from dali.errors import DaliError
from dali.fanout import each
from dali.lifecycle import domains, usable_says_the_node
from dali.storage import Storage
from dali.text import visible_line
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


def node_row(cluster: Cluster, files: Storage, virt: Libvirt, node: Node, dom, addresses: dict[str, str]) -> dict:
    row = {"node": node.name, "state": "undefined", "address": addresses.get(node.name, "-"),
           "pmem": "-", "disk": "-", "uptime": "-"}
    disk = cluster.disk(node)
    if files.is_ours(disk):
        row["disk"] = f"{disk.name} ({_mib(files.allocated(disk))})"  # what it wrote
    if dom is None:
        return row
    row["state"] = STATES.get(dom.state()[0], "other")
    from dali import evidence  # here: a no-op doit loads status, and need not load this
    why = evidence.panicked(files, virt, dom)
    if why:
        row["state"], row["why"] = "panicked", why
        return row
    if row["state"] != "running":
        return row
    started = virt.started_at(dom)
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
        row["pmem"] = visible_line(f"{ns.get('mode')} {ns.get('size')}")  # as ndctl on the node says
    except (DaliError, libvirt.libvirtError):
        row["pmem"] = "?"  # a busy node: status waits for nothing
    return row


def status(cluster: Cluster, files: Storage, virt: Libvirt) -> list[dict]:
    """Print the table; return the node rows."""
    addresses = network.addresses_of(cluster, virt)
    doms = domains(cluster, virt, cluster.nodes)
    rows = each(doms, lambda n, dom: node_row(cluster, files, virt, n, dom, addresses))
    running = [(n, d) for (n, d), r in zip(doms, rows) if r["pmem"] not in ("-", "(agent silent)", "?")]
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
            print(f"{r['node']}: panicked: {visible_line(r['why'])}: doit start {r['node']} boots it "
                  f"again, its console and memory kept first in {evidence.crash_dir(cluster)}/")
    print(_network_line(cluster, virt))
    print(_fam_line(cluster, files))
    if not cluster.image.path and image.node_image_is_kept(cluster, files, image.wanted_tarball(cluster)):
        print(f"image {image.base(files)}{files.where}: built from an older recipe (a dali upgrade, "
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


def _fam_line(cluster: Cluster, files: Storage) -> str:
    path = cluster.fam_path
    if not files.exists(path):
        return f"FAM {path}{files.where}: not made yet"
    ns = fam.held(cluster, files)
    holds = f"{ns['mode']} namespace {ns['uuid']}" if ns["mode"] != "raw" else "no namespace yet"
    usable = "" if files.qemu_may_use(path) else ", not usable by qemu yet (doit sets its group and mode)"
    return f"FAM {path}{files.where}: {files.size(path)} bytes, {holds}{usable}"
