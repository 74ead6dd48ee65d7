"""Each node's identity disk: what makes a node itself, decided on the host before it boots.

A node used to make its own ssh host key at its first boot, take its address from DHCP through
systemd-networkd and its resolver from systemd-resolved: under TCG that was about a third of a
boot (ssh-keygen alone took seconds of emulated CPU). All of it is known on the host first:

- its ssh host key (ed25519): made here with ssh-keygen, in milliseconds, once per node and
  never shared; known_hosts is written from it, so ssh trusts the node from its first boot;
- its address: the one its DHCP host entry in the network gives its MAC (dali/network.py), so
  DHCP and the node always agree, and nothing else changes for a node or for dnsmasq;
- its resolver: the network's dnsmasq (the host's address on the bridge), which knows every
  node by name, with the cluster's domain to search;
- the key root accepts: the cluster's public key (state/<tag>/ssh/id_ed25519.pub). Not in the
  image, so that one image serves every cluster of the checkout (dali/image.py copies it from
  state/cache/ instead of building it again for each cluster).

They reach the node on a small read-only virtio disk (<serial>dali-identity</serial>), a plain
tar archive that the image's dali-identity unit unpacks early in the boot
(templates/guest/usr/local/sbin/dali-identity). A disk, not the kernel command line, because the
private key must not be readable by every process of the node (/proc/cmdline is), nor by
every user of the host who may read a domain's XML. The file is readable by root and qemu's
group only, like a node's disk, and carries dali's mark: `doit clean` and `doit remove:NODE`
delete it with the node.

The archive is the only copy of the private key: rewriting it (a changed address) keeps the key
that is in it, so a node keeps its identity for as long as the file exists.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from dali import image, network
from dali.cluster import Cluster, Node
from dali.errors import DaliError
from dali.storage import Storage
from dali.virt import Libvirt

SERIAL = "dali-identity"
TARGET = "vdy"  # a name for libvirt; the node finds the disk by its serial
KEY = "ssh_host_ed25519_key"
FACTS = "network"
AUTHORIZED = "authorized_keys"


def path(cluster: Cluster, node: Node | str) -> Path:
    return cluster.data_dir / f"{getattr(node, 'name', node)}.identity"


def used(cluster: Cluster, files: Storage) -> bool:
    """Only dali's image knows the disk: a user's own image (image.path) keeps what it has, and
    so does an image kept from before dali made identity disks (its nodes make their own keys
    and ask DHCP, as they were built to)."""
    return not cluster.image.path and image.has_feature(files, "identity-disk")


def attached(dom) -> bool:
    """Whether a node boots with its identity disk, as its definition says: how a running node
    is waited for and reached follows what it was defined with."""
    return any(d.findtext("serial") == SERIAL for d in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk"))


# --- what the archive holds -------------------------------------------------------------------

def facts(cluster: Cluster, virt: Libvirt, node: Node) -> str:
    """The node's address, MAC, resolver and search domain, as the shell lines dali-identity
    reads; GATEWAY only where the network routes anywhere (forward = "nat")."""
    found = network.node_address(cluster, virt, node.name)  # one look-up: every doit checks this
    if found is None:
        raise DaliError(f"{node.name} has no address in network {cluster.network.name} yet: "
                        "run doit (the network task gives it one)")
    ip, prefix, host = found
    gateway = host if cluster.network.forward == "nat" else ""
    return (f"ADDRESS={ip}/{prefix}\nMAC={node.mac}\nDNS={host}\n"
            f"DOMAIN={cluster.tag}\nGATEWAY={gateway}\n")


def authorized_key(cluster: Cluster) -> bytes:
    """The cluster's public key, the one root accepts on every node."""
    pub = cluster.ssh_key.with_suffix(".pub")
    try:
        return pub.read_bytes()
    except FileNotFoundError:
        raise DaliError(f"{pub} is missing: run doit (image:sshkey makes the cluster's key)") from None


def archive(key: bytes, public: bytes, network_facts: str, authorized: bytes) -> bytes:
    """A tar archive with fixed owners, modes and times: the same content gives the same bytes,
    so "is the file current" is a comparison of bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in ((KEY, key, 0o600), (KEY + ".pub", public, 0o644),
                                 (FACTS, network_facts.encode(), 0o644), (AUTHORIZED, authorized, 0o600)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()  # a whole number of 10 KiB records: a valid raw disk size


def read(disk: Path | bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(disk), mode="r:") if isinstance(disk, bytes) else \
            tarfile.open(disk, mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _held(cluster: Cluster, files: Storage, node: Node | str) -> bytes | None:
    """The bytes of the node's identity disk if it is ours; None if there is none."""
    disk = path(cluster, node)
    if not files.is_ours(disk):
        return None
    return files.read(disk, 0, files.size(disk) or 0)


def new_key(node: Node) -> tuple[bytes, bytes]:
    """A fresh ed25519 key pair, made in a private temporary directory and read back."""
    with tempfile.TemporaryDirectory(prefix="dali-hostkey-") as tmp:
        key = Path(tmp) / KEY
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{node.name}",
                        "-f", str(key)], check=True, capture_output=True)
        return key.read_bytes(), Path(f"{key}.pub").read_bytes()


def _current_key(cluster: Cluster, files: Storage, node: Node | str) -> tuple[bytes, bytes] | None:
    data = _held(cluster, files, node)
    if data is None:
        return None
    try:
        held = read(data)
        return held[KEY], held[KEY + ".pub"]
    except (OSError, tarfile.TarError, KeyError):
        return None  # torn or not an archive: the node gets a new identity


def wanted(cluster: Cluster, files: Storage, virt: Libvirt, node: Node) -> bytes | None:
    """The archive the node's disk should hold, keeping its key; None if it has no key yet."""
    key = _current_key(cluster, files, node)
    return None if key is None else archive(*key, facts(cluster, virt, node), authorized_key(cluster))


def is_current(cluster: Cluster, files: Storage, virt: Libvirt, node: Node) -> bool:
    want = wanted(cluster, files, virt, node)
    return want is not None and _held(cluster, files, node) == want


def ensure(cluster: Cluster, files: Storage, virt: Libvirt, node: Node) -> None:
    """Write the node's identity disk: its key kept if it has one, made if not. Replaced whole
    (Storage.put): a run killed at any point leaves the old disk or the new; on a remote host
    an upload cut short leaves a torn archive, and the node gets a new host key (known_hosts
    follows it), never a key half of one and another."""
    disk = path(cluster, node)
    files.have(disk)  # one dali did not make is refused before anything
    key = _current_key(cluster, files, node) or new_key(node)
    data = archive(*key, facts(cluster, virt, node), authorized_key(cluster))
    if _held(cluster, files, node) != data:
        files.put(disk, data)


def public_key(cluster: Cluster, files: Storage, node: Node | str) -> str | None:
    """The node's host key as known_hosts takes it ("ssh-ed25519 AAAA..."), if it has one."""
    key = _current_key(cluster, files, node)
    if key is None:
        return None
    return " ".join(key[1].decode().split()[:2])
