"""The cluster as the rest of dali sees it: validated settings plus what follows from them.

A Cluster is made once by dali.settings.load() and never changes. Names, paths and identities
(UUIDs, MACs, machine-ids) are derived here from the settings, so they are stable from run to
run and need no record that a killed run could lose.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = Path("/var/lib/dali")  # traversable by libvirt-qemu on any host, unlike ~

# Every identifier dali derives hangs off this namespace (UUID 6f1d1c3e-8a52-4c55-9a55-2f0d1a7c0b11).
DALI_NAMESPACE = bytes.fromhex("6f1d1c3e8a524c559a552f0d1a7c0b11")


def uuid5(name: str) -> bytes:
    """The name-based UUID (RFC 4122 version 5, SHA-1) of `name` in DALI_NAMESPACE, as 16 bytes:
    what uuid.uuid5() makes. Made here because the uuid module imports platform, and the two
    took 5 ms of every doit, a no-op doit included."""
    b = bytearray(hashlib.sha1(DALI_NAMESPACE + name.encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return bytes(b)


def uuid_text(b: bytes) -> str:
    """16 bytes in the usual 8-4-4-4-12 form, as str(uuid.UUID(bytes=b))."""
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_remote(uri: str) -> bool:
    """Whether dali reaches the libvirtd of `uri` only through libvirt's API, never through
    this machine's files: a URI naming a host (qemu+ssh://host/system), or a libvirtd's own
    socket (qemu+unix:///system?socket=PATH: another daemon, perhaps in another mount
    namespace, that sees other files at the same paths). See docs/remote.md."""
    parts = read_uri(uri)
    return bool(parts.host) or "socket" in dict(parts.parameters)


SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")


class LibvirtUri(NamedTuple):
    """A libvirt URI's parts as libvirt reads them (its viruri.c, over libxml2's parser)."""
    driver: str
    transport: str  # as libvirt picks it: named in the scheme, else tls with a host, unix without
    user: str       # user, host, path and parameters percent-decoded, as libvirt uses them
    host: str       # an IPv6 address without its brackets
    port: str       # the text after the host's ':' ("" for the transport's own), unchecked
    path: str
    fragment: str
    parameters: tuple[tuple[str, str], ...]  # in order, a name given twice twice


# user@host:port, the user and the port optional; an IPv6 address in brackets.
_NETLOC = re.compile(r"(?:(?P<user>[^@]*)@)?(?P<host>\[[^\[\]@]*\]|[^:\[\]@]*)(?::(?P<port>[^@]*))?")
_URI = re.compile(r"(?P<scheme>[^:/?#]+)://(?P<netloc>[^/?#]*)(?P<path>[^?#]*)"
                  r"(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?", re.DOTALL)


def _decoded(text: str) -> str:
    """%XX as libvirt decodes it, to bytes; bytes that are not UTF-8 become lone surrogates
    (which no check of printable text lets through), never a printable stand-in."""
    return unquote(text, errors="surrogateescape")


def read_uri(uri: str) -> LibvirtUri:
    """`uri` in parts, or ValueError saying which part cannot be read. Parameters are split at
    every '&' as libvirt does, and not at '+' (Python's parse_qs reads '+' as a space); a ';'
    is refused, since libvirt splits at it too when the rest holds no '&'."""
    whole = _URI.fullmatch(uri)
    if not whole:
        raise ValueError("is not of the form driver[+transport]://[user@][host][:port]/path[?parameters]")
    netloc = _NETLOC.fullmatch(whole["netloc"])
    if not netloc:
        raise ValueError(f"cannot read {whole['netloc']!r} as [user@]host[:port] (an IPv6 address "
                         "goes in brackets: [::1]:22)")
    query = whole["query"] or ""
    if ";" in query:
        raise ValueError("has a ';' in its parameters, where libvirt may split them: write '&' "
                         "between parameters, %3B in a value")
    driver, _, transport = whole["scheme"].partition("+")
    host = netloc["host"]
    if host.startswith("[") and ":" not in host:
        raise ValueError(f"{host!r} is not an IPv6 address, the only kind written in brackets")
    return LibvirtUri(
        driver=driver, transport=transport or ("tls" if host else "unix"),
        user=_decoded(netloc["user"] or ""), host=_decoded(host.removeprefix("[").removesuffix("]")),
        port=netloc["port"] or "", path=_decoded(whole["path"]),
        fragment=whole["fragment"] or "",
        parameters=tuple((_decoded(name), _decoded(value)) for name, _, value in
                         (part.partition("=") for part in query.split("&") if part)))


class Network(NamedTuple):
    name: str
    forward: str  # "nat" or "none"
    address: str
    prefix: int
    dhcp_start: str
    dhcp_end: str


class Image(NamedTuple):
    path: Path | None  # a user's own qcow2; None means dali builds a Debian image
    suite: str
    mirror: str  # "" means the host's apt mirror
    http_proxy: str
    extra_packages: tuple[str, ...]
    disk_size: int


class Filesystem(NamedTuple):
    type: str  # "none" or "ocfs2"
    mountpoint: str
    slots: int
    heartbeat_threshold: int = 31  # o2cb's default: dead after 60 s without a heartbeat


class Kernel(NamedTuple):
    """The user's own kernel: their bzImage and the INSTALL_MOD_PATH of its modules."""
    bzimage: Path
    modules: Path


class Node(NamedTuple):
    """One VM of the cluster. Its identities are derived from the cluster tag and its name."""

    cluster_tag: str
    suffix: str
    is_original: bool

    @property
    def name(self) -> str:
        return self.cluster_tag + self.suffix

    def _derived(self, what: str) -> bytes:
        return uuid5(f"{what}:{self.name}")

    @property
    def uuid(self) -> str:
        return uuid_text(self._derived("domain"))

    @property
    def machine_id(self) -> str:
        return self._derived("machine-id").hex()

    @property
    def mac(self) -> str:
        # 52:54:00 is QEMU's locally administered prefix, the one libvirt itself hands out.
        b = self._derived("mac")
        return "52:54:00:%02x:%02x:%02x" % (b[0], b[1], b[2])

    def identity(self) -> dict:
        """Everything that tells this node from another, as plain values (for config_changed)."""
        return {"name": self.name, "uuid": self.uuid, "mac": self.mac,
                "machine_id": self.machine_id, "original": self.is_original}


class Cluster(NamedTuple):
    tag: str
    original: str
    clones: tuple[str, ...]
    data_dir: Path  # the FAM and the disks
    state_dir: Path  # generated files of this cluster, under the checkout's state/
    uri: str
    accel: str
    network: Network
    fam_size: int
    memory: int
    max_memory: int
    memory_slots: int
    vcpus: int
    image: Image
    device_mode: str  # fsdax, devdax or raw: the namespace the original leaves on the FAM
    device_style: str  # seed (qemu:commandline) or native (libvirt's <memory model='nvdimm'>)
    fs: Filesystem
    own_kernel: Kernel | None  # None: the image's kernel
    kernel_args: str  # more kernel arguments for every node
    shares: tuple[tuple[str, str], ...]  # (host directory, where every node mounts it)
    gdb: bool
    clone_mode: str
    apparmor_template: Path
    boot_timeout: int
    shutdown_timeout: int
    remote_netns: str = ""  # with a remote uri: the namespace of that host's guest networks
    coherence: str = "off"  # off, strict or cached: the FAM checked as non-coherent memory (docs/coherence.md)
    known_failures: Path | None = None  # the baseline of doit torture (dali/known_failures.py)
    namespace_from: str = "cache"  # cache or original: where a new FAM's namespace comes from (dali/namespaces.py)

    # --- who we are --------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This cluster among all dali clusters on the host: the checkout (through state_dir),
        the tag and the data directory. Two checkouts or two DALI_DIRs with the same tag are two
        clusters, and every mark (dali/marks.py) names the one that made the object."""
        return uuid_text(uuid5(f"cluster:{self.state_dir}\0{self.data_dir}"))

    @property
    def mark(self) -> dict:
        """The attributes of the <dali:cluster> mark on this cluster's libvirt objects."""
        return {"tag": self.tag, "id": self.id, "checkout": str(self.state_dir.parent.parent),
                "dir": str(self.data_dir)}

    # --- the nodes ----------------------------------------------------------------------------

    @property
    def original_node(self) -> Node:
        return Node(self.tag, self.original, True)

    @property
    def clone_nodes(self) -> tuple[Node, ...]:
        return tuple(Node(self.tag, s, False) for s in self.clones)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.original_node,) + self.clone_nodes

    @property
    def network_uuid(self) -> str:
        return uuid_text(uuid5(f"network:{self.id}:{self.network.name}"))

    # --- where things live --------------------------------------------------------------------
    # The files of the data directory itself. Where the rest lies (the image, your kernel, the
    # consoles) is decided by the cluster's Storage (dali/storage/), as is how any is made.

    @property
    def fam_path(self) -> Path:
        # Named FAM, as in the seed (a FAME/F.E.E. host shares the name).
        return self.data_dir / "FAM"

    @property
    def coherence_model(self) -> Path:
        """device.coherence: the model of the FAM's cache lines that every node's QEMU maps."""
        return self.data_dir / "FAM.coherence"

    @property
    def frozen_disk(self) -> Path:
        """The original's disk as it was when first cloned; clones start from it."""
        return self.data_dir / "frozen.qcow2"

    def disk(self, node: Node | str) -> Path:
        """A node's disk, by node or by domain name (a pruned node is known only by name)."""
        return self.data_dir / f"{getattr(node, 'name', node)}.qcow2"

    def domain_xml(self, node: Node) -> Path:
        return self.state_dir / "xml" / f"{node.name}.xml"

    @property
    def network_xml(self) -> Path:
        return self.state_dir / "network.xml"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def cache_dir(self) -> Path:
        """Shared by every cluster of this checkout (the debootstrap tree takes minutes)."""
        return self.state_dir.parent / "cache"

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the one doit that changes this cluster; beside state/<tag>/ for the
        same reason as dep_file."""
        return self.state_dir.parent / f"{self.tag}.lock"

    @property
    def dep_file(self) -> Path:
        """doit's records for this cluster. Beside state/<tag>/, not in it: `doit clean`
        removes state/<tag>/ while doit still has this file open (`doit clean --forget`)."""
        return self.state_dir.parent / f"{self.tag}.doit.sqlite"
