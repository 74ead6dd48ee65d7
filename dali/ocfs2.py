"""fs.type = "ocfs2": the shared device as one OCFS2 filesystem, mounted on every node.

What the same author's OCFS2 guide does by hand on each node, done through the guest agent:
/etc/ocfs2/cluster.conf (from templates/ocfs2/cluster.conf.j2: every node's name, fixed
address, number and port), /etc/default/o2cb (enabled, booting this cluster), o2cb and ocfs2
enabled at boot, an fstab line for the mount point; then the cluster registered and the device
mounted. Everything but the registration is on the node's disk, so a node booted any way
(`virsh start` too) comes up with the filesystem mounted.

The device is formatted once, with fs.slots node slots, and only when it holds nothing: the
host reads the device's whole data area in the FAM (all zeros) and a node's wipefs finds no
signature. Anything else is never overwritten: `doit mkfs --yes` formats on purpose. A device
that holds something else is refused before `doit start` boots a node (refuse_other_data, on
the host, from the FAM), so a refused start leaves every node as it was.

A node number is its fixed address within the subnet: stable whatever the order of clones,
unique, and the same on every node.

A node that leaves the config (shut down, dropped from `clones`) leaves o2cb's registration on
the nodes that stay too, not only their cluster.conf: o2dlm lets a node join a mounted
filesystem only when both sides register the same nodes (dlm_match_nodes in the kernel's
fs/ocfs2/dlm/dlmdomain.c: "registered in local node but not in joining node", EINVAL), so a
node booting afterwards (from a cluster.conf without it) was refused by the others
(mount.ocfs2: "Internal logic failure"). A node that left the config but still runs keeps its registration (dali/prune.py leaves
it running): cutting a live node's links would have it and the others fence each other.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess

from dali import fam, guest, lifecycle, network, prune
from dali.cluster import Cluster, Node
from dali.errors import DaliError
from dali.fanout import each
from dali.render import render
from dali.reporter import log
from dali.storage import Storage
from dali.text import visible_line
from dali.virt import Libvirt

PORT = 7777
DEVICE = "/dev/pmem0"


def cluster_name(cluster: Cluster) -> str:
    """o2cb wants 1-16 letters and digits: the tag without its dashes."""
    return cluster.tag.replace("-", "")[:16]


def node_numbers(cluster: Cluster, addresses: dict[str, str], prefix: int) -> dict[str, int]:
    numbers = {}
    for node in cluster.nodes:
        ip = ipaddress.IPv4Address(addresses[node.name])
        numbers[node.name] = int(ip) - int(ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False).network_address)
    return numbers


def config_files(cluster: Cluster, virt: Libvirt) -> dict[str, str]:
    """The files every node must hold, for the cluster as it is configured now."""
    addresses = network.addresses_of(cluster, virt)
    missing = [n.name for n in cluster.nodes if n.name not in addresses]
    if missing:
        raise DaliError(f"{', '.join(missing)} has no address yet: run doit first")
    prefix = network.plan(cluster, virt).prefix
    numbers = node_numbers(cluster, addresses, prefix)
    nodes = [{"name": n.name, "ip": addresses[n.name], "number": numbers[n.name]} for n in cluster.nodes]
    name = cluster_name(cluster)
    return {
        "/etc/ocfs2/cluster.conf": render("ocfs2/cluster.conf.j2", name=name, nodes=nodes, port=PORT),
        "/etc/default/o2cb": render("ocfs2/o2cb.j2", name=name,
                                    heartbeat_threshold=cluster.fs.heartbeat_threshold),
    }


def fstab_line(cluster: Cluster) -> str:
    # systemd mounts it at boot after o2cb has registered the cluster (o2cb.service needs the
    # node's address: its drop-in in templates/guest/ waits for network-online).
    return f"{DEVICE} {cluster.fs.mountpoint} ocfs2 _netdev,x-systemd.requires=o2cb.service 0 0"


def _still_running_elsewhere(cluster: Cluster, virt: Libvirt) -> list[str]:
    """Our nodes that left the config (prune's stale domains) but still run: their
    registration stays on the others."""
    return sorted(name for name, dom in prune.stale_domains(cluster, virt).items() if virt.is_running(dom))


def _stale_registrations(cluster: Cluster, keep: list[str]) -> str:
    """A shell test listing the nodes o2cb has registered that are neither configured nor in
    keep (one per line; nothing when there are none)."""
    known = " ".join(shlex.quote(n) for n in [n.name for n in cluster.nodes] + keep)
    return (f"for d in /sys/kernel/config/cluster/{cluster_name(cluster)}/node/*; do "
            f"[ -d \"$d\" ] || continue; n=${{d##*/}}; case \" {known} \" in *\" $n \"*) ;; *) echo \"$n\";; esac; done")


def configure(cluster: Cluster, virt: Libvirt, dom, wanted: dict[str, str], keep: list[str] = ()) -> None:
    """Put the files on a running node and register the cluster, as far as the node lacks them.
    A node that booted with its configuration in place has o2cb started and the device mounted
    by its boot (fstab): it is left to it, for what unmasking (a reload of systemd) and a
    registration cost under TCG (about 9 s of every `doit start` of three nodes). On a node
    where o2cb already runs, registering again adds the nodes new to cluster.conf, online, and
    the nodes that left it (but those in keep, still running) are unregistered: nobody
    unmounts."""
    changed = [path for path, text in wanted.items() if virt.run(dom, ["cat", path]).stdout != text]
    if changed:
        virt.run(dom, ["mkdir", "-p", "/etc/ocfs2"]).check("mkdir /etc/ocfs2")
        for path in changed:
            guest.put_file(virt, dom, wanted[path].encode(), path, 0o644)
    line = fstab_line(cluster)
    address = network.addresses_of(cluster, virt).get(dom.name(), "")
    where = shlex.quote(cluster.fs.mountpoint)
    name = cluster_name(cluster)
    # Registered already when configfs has every node of cluster.conf: a fact of the node, so a
    # run killed between writing the files and registering is made good by the next one.
    nodes = " ".join(shlex.quote(n.name) for n in cluster.nodes)
    registered = f"for n in {nodes}; do [ -d /sys/kernel/config/cluster/{name}/node/$n ] || exit 1; done"
    script = (f"mkdir -p {where} && "
              f"{{ grep -qF '{line}' /etc/fstab || echo '{line}' >> /etc/fstab; }} && "
              # the image masks o2cb (it costs every boot seconds); unmasked once, on the node's
              # disk (unmask reloads systemd itself); it starts once dali-identity has set the
              # address (network-online.target)
              "if [ \"$(readlink /etc/systemd/system/o2cb.service)\" = /dev/null ]; then "
              "systemctl unmask -q o2cb.service; fi && "
              # o2cb registers this node by its address: on a loaded host DHCP can still be at it
              f"for i in $(seq 300); do ip -4 -o addr show | grep -qF ' {address}/' && break; sleep 1; done; "
              f"if systemctl is-active -q o2cb; then ( {registered} ) || o2cb register-cluster {name}; "
              "else systemctl start o2cb || { journalctl -u o2cb -n 15 --no-pager; exit 1; }; fi && "
              # the nodes that left the config: rmdir is o2nm's own way to unregister one online
              f"for n in $({_stale_registrations(cluster, list(keep))}); do "
              f"rmdir /sys/kernel/config/cluster/{name}/node/$n || exit 1; done")
    virt.run(dom, ["sh", "-c", script], timeout=600).check(f"setting up o2cb on {dom.name()}")


def _holds_ocfs2(cluster: Cluster, files: Storage, found: list[str], data_offset: int) -> bool:
    """Given the signatures found on the device: True if it holds OCFS2, False if it is blank
    (no signature, every byte of its data area in the FAM zero); anything else is refused."""
    if "ocfs2" in found:
        return True
    if found or files.nonzero_mib(cluster.fam_path, data_offset):
        raise DaliError(f"{DEVICE} holds {visible_line(', '.join(found)) or 'data'}: dali formats only a blank "
                        "device. To format it anyway (its data is lost): doit mkfs --yes; or "
                        "doit reset:fam (nodes shut off) to start from a blank device")
    return False


# blkid reads the start of the device: a filesystem's superblock lies in its first MiBs. (A
# signature that lies further in, as a GPT's backup at the end, is data all the same, which
# _holds_ocfs2 refuses: only "blank" or "OCFS2" get through.)
PROBED = 64 << 20


def refuse_other_data(cluster: Cluster, files: Storage) -> None:
    """Before a node boots: the shared device holds OCFS2 or nothing at all, as the host reads
    it in the FAM (the device's first byte lies at the namespace's data offset). blkid's probe
    finds what a node's wipefs would; a device it finds nothing on must be all zeros. A FAM with
    no fsdax namespace yet is the original's to prepare: nothing to read."""
    held = fam.held(cluster, files)
    if held["mode"] != "fsdax":
        return
    with files.fetch(cluster.fam_path, held["data_offset"], min(PROBED, held["size"])) as start:
        # blkid exits 2 when it finds nothing, 8 when signatures contradict each other
        probe = subprocess.run(["blkid", "--probe", "--match-tag", "TYPE", "--output", "value", str(start)],
                               capture_output=True, text=True)
    found = probe.stdout.split() if probe.returncode == 0 else []
    if probe.returncode == 8:
        found = ["more than one signature"]
    _holds_ocfs2(cluster, files, found, held["data_offset"])


def format_if_blank(cluster: Cluster, files: Storage, virt: Libvirt, dom) -> None:
    """mkfs.ocfs2, but only on a device that holds nothing at all: asked of the node itself,
    right before it formats (refuse_other_data asked the FAM before the nodes booted)."""
    if not _holds_ocfs2(cluster, files, guest.signatures(virt, dom, DEVICE),
                        fam.held(cluster, files)["data_offset"]):
        make_filesystem(cluster, virt, dom)


def make_filesystem(cluster: Cluster, virt: Libvirt, dom) -> None:
    log(f"{dom.name()}: mkfs.ocfs2 -N {cluster.fs.slots} {DEVICE}")
    # 4 KiB blocks and clusters, the page size, as DAX wants (mkfs.ocfs2 picks 2 KiB blocks on
    # pmem by itself); "y" answers its question when the device holds an OCFS2 already (mkfs --yes).
    virt.run(dom, ["mkfs.ocfs2", "-q", "-b", "4K", "-C", "4K", "-L", cluster_name(cluster),
                   "-N", str(cluster.fs.slots), DEVICE], stdin=b"y\n", timeout=600).check("mkfs.ocfs2")


def mount(cluster: Cluster, virt: Libvirt, dom) -> None:
    where = shlex.quote(cluster.fs.mountpoint)
    # systemd mounts it from fstab at every boot, maybe at this very moment: a mount of our own
    # beside that one fails with EBUSY. `systemctl start` of its mount unit joins a mount under
    # way; only if that fails does our own mount run, for the error it prints.
    unit = f'"$(systemd-escape -p --suffix=mount {where})"'
    result = virt.run(dom, ["sh", "-c", f"mountpoint -q {where} || systemctl start -q {unit} 2>/dev/null || "
                                        f"mountpoint -q {where} || mount {where}"], timeout=600)
    if result.exitcode != 0:
        slots = virt.run(dom, ["sh", "-c", "dmesg | grep -c 'no free slots'"]).stdout.strip()
        if slots not in ("", "0"):
            raise DaliError(f"{dom.name()}: the OCFS2 filesystem has no free node slot: unmount it "
                            f"on every node (doit pssh umount {where}), then doit pssh --on "
                            f"{cluster.original} tunefs.ocfs2 -N <more> {DEVICE}, and raise fs.slots")
    result.check(f"mount {where}")


def bring_up(cluster: Cluster, files: Storage, virt: Libvirt, running: list[tuple[Node, object]]) -> None:
    """Every running node configured, the device formatted if it is blank, mounted everywhere."""
    if not running:
        return
    wanted, keep = config_files(cluster, virt), _still_running_elsewhere(cluster, virt)
    # Node by node, each step waits on systemd and o2cb under TCG, and each mount on the
    # heartbeat: side by side instead. Nodes mount at once at every boot anyway (fstab), which
    # is what OCFS2's superblock lock and slot map are for.
    each(running, lambda node, dom: configure(cluster, virt, dom, wanted, keep))
    format_if_blank(cluster, files, virt, running[0][1])

    def mount_here(node, dom):
        mount(cluster, virt, dom)
        log(f"{node.name}: {DEVICE} mounted on {cluster.fs.mountpoint} (ocfs2)")
        _say_if_threshold_waits_for_a_boot(cluster, virt, node, dom)
    each(running, mount_here)


def _say_if_threshold_waits_for_a_boot(cluster: Cluster, virt: Libvirt, node: Node, dom) -> None:
    """The kernel takes a new heartbeat threshold only while no region is active, so a changed
    fs.heartbeat_threshold waits in /etc/default/o2cb for the node's next boot."""
    live = virt.run(dom, ["cat", f"/sys/kernel/config/cluster/{cluster_name(cluster)}/heartbeat/dead_threshold"])
    if live.exitcode == 0 and live.stdout.strip() not in ("", str(cluster.fs.heartbeat_threshold)):
        log(f"{node.name}: heartbeat threshold {visible_line(live.stdout)} until it boots again; "
            f"fs.heartbeat_threshold = {cluster.fs.heartbeat_threshold} then: doit restart (every node: "
            "nodes with different thresholds refuse each other)")


def running_nodes(cluster: Cluster, files: Storage, virt: Libvirt) -> list:
    """The nodes that run and are usable, without waiting for one that boots (a later doit or
    doit start takes it in)."""
    return lifecycle.running(cluster, files, virt, wait=False)[0]


def is_current(cluster: Cluster, files: Storage, virt: Libvirt) -> bool:
    """Every running node holds the configuration for the cluster as it is now, registers no
    node that left it (but those still running), and has the filesystem mounted."""
    wanted, stale = config_files(cluster, virt), _stale_registrations(cluster, _still_running_elsewhere(cluster, virt))

    def current(_node, dom) -> bool:
        return (all(virt.run(dom, ["cat", path]).stdout == text for path, text in wanted.items())
                and virt.run(dom, ["sh", "-c", f"mountpoint -q {shlex.quote(cluster.fs.mountpoint)} && "
                                               f"[ -z \"$({stale})\" ]"]).exitcode == 0)
    # Every `doit` and `doit start` asks this of a running cluster: the nodes answer side by side.
    return all(each(running_nodes(cluster, files, virt), current))


def mkfs(cluster: Cluster, files: Storage, virt: Libvirt, yes: bool = False) -> None:
    """`doit mkfs --yes`: format the shared device whatever it holds (its contents are lost)."""
    if not yes:
        raise DaliError("doit mkfs formats the shared device and destroys what it holds: "
                        "doit mkfs --yes to do it")
    running = running_nodes(cluster, files, virt)
    if not running:
        raise DaliError("no node runs: doit start first (mkfs runs on a node)")
    mounted = [n.name for n, d in running
               if virt.run(d, ["mountpoint", "-q", cluster.fs.mountpoint]).exitcode == 0]
    if mounted:
        raise DaliError(f"{DEVICE} is mounted on {', '.join(mounted)}: unmount it everywhere first "
                        f"(doit pssh umount {cluster.fs.mountpoint})")
    make_filesystem(cluster, virt, running[0][1])
