"""The cluster's configuration: cluster.toml plus the seed's environment variables.

Loaded and validated once, when dodo.py is imported, into one frozen `Cluster` that every task
module receives. Nothing else reads the environment or the file. A bad value raises ConfigError
with one line naming the setting, what is allowed and where it came from, before anything exists.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tasks.errors import DaliError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "cluster.toml"
DEFAULT_DATA_ROOT = Path("/var/lib/dali")  # traversable by libvirt-qemu on any host, unlike ~
GiB = 1 << 30
MiB = 1 << 20

# Every identifier dali derives (UUIDs, MACs, machine-ids) hangs off this namespace, so the same
# cluster always gets the same identities and no state is needed to remember them.
DALI_NAMESPACE = uuid.UUID("6f1d1c3e-8a52-4c55-9a55-2f0d1a7c0b11")


class ConfigError(DaliError):
    """A setting is wrong; the message names it and what is allowed."""


@dataclass(frozen=True)
class Network:
    name: str
    forward: str  # "nat" or "none"
    address: str
    prefix: int
    dhcp_start: str
    dhcp_end: str


@dataclass(frozen=True)
class Image:
    path: Path | None  # a user's own qcow2; None means dali builds a Debian image
    suite: str
    mirror: str  # "" means the host's apt mirror
    http_proxy: str
    extra_packages: tuple[str, ...]
    disk_size: int


@dataclass(frozen=True)
class Node:
    """One VM of the cluster. Its identities are derived from the cluster tag and its name."""

    cluster_tag: str
    suffix: str
    is_original: bool

    @property
    def name(self) -> str:
        return self.cluster_tag + self.suffix

    def _derived(self, what: str) -> uuid.UUID:
        return uuid.uuid5(DALI_NAMESPACE, f"{what}:{self.name}")

    @property
    def uuid(self) -> str:
        return str(self._derived("domain"))

    @property
    def machine_id(self) -> str:
        return self._derived("machine-id").hex

    @property
    def mac(self) -> str:
        # 52:54:00 is QEMU's locally administered prefix, the one libvirt itself hands out.
        b = self._derived("mac").bytes
        return "52:54:00:%02x:%02x:%02x" % (b[0], b[1], b[2])


@dataclass(frozen=True)
class Cluster:
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
    clone_mode: str
    apparmor_template: Path
    boot_timeout: int
    shutdown_timeout: int
    source: str = field(default="", compare=False)  # where the settings came from, for messages

    @property
    def fam_path(self) -> Path:
        # Named FAM, as in the seed (a FAME/F.E.E. host shares the name).
        return self.data_dir / "FAM"

    # --- where things live -----------------------------------------------------------------

    @property
    def image_dir(self) -> Path:
        """The built guest image: base.qcow2, vmlinuz, initrd.img (read by qemu)."""
        return self.data_dir / "image"

    @property
    def frozen_disk(self) -> Path:
        """The original's disk as it was when first cloned; clones start from it."""
        return self.data_dir / "frozen.qcow2"

    def disk(self, node: Node | str) -> Path:
        """A node's disk, by node or by domain name (prune knows only the name)."""
        return self.data_dir / f"{getattr(node, 'name', node)}.qcow2"

    def domain_xml(self, node: Node) -> Path:
        return self.state_dir / "xml" / f"{node.name}.xml"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def cache_dir(self) -> Path:
        """Shared by every cluster of this checkout (the debootstrap tree takes minutes)."""
        return self.state_dir.parent / "cache"

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
        return str(uuid.uuid5(DALI_NAMESPACE, f"network:{self.tag}:{self.network.name}"))


# --- parsing helpers --------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}


def parse_size(value: Any, setting: str) -> int:
    """'1G', '512M', '2GiB' or a number of bytes -> bytes (binary units, as fallocate -l)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{setting} = {value!r} is not a size: write e.g. '1G', '512M' or bytes")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _choice(value: Any, setting: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{setting} = {value!r} is not allowed: use one of {', '.join(allowed)}")
    return value


def _int(value: Any, setting: str, minimum: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = None
    if n is None or isinstance(value, bool) or n < minimum or str(value).strip() != str(n):
        raise ConfigError(f"{setting} = {value!r}: must be a whole number >= {minimum}")
    return n


_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_SUFFIX = re.compile(r"^[a-z0-9]+$")


# --- the schema: every key cluster.toml may hold, with its environment override --------------

_KNOWN = {
    "": {"tag", "original", "clones", "dir", "uri", "accel",
         "network", "fam", "node", "image", "clone", "apparmor", "timeouts"},
    "network": {"name", "forward", "address", "prefix", "dhcp_start", "dhcp_end"},
    "fam": {"size"},
    "node": {"memory", "max_memory", "memory_slots", "vcpus"},
    "image": {"path", "suite", "mirror", "http_proxy", "extra_packages", "disk_size"},
    "clone": {"mode"},
    "apparmor": {"template"},
    "timeouts": {"boot", "shutdown"},
}


def _check_known_keys(raw: dict, source: str) -> None:
    for section, allowed in _KNOWN.items():
        table = raw if section == "" else raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key in table:
            if key not in allowed:
                where = f"{section}.{key}" if section else key
                raise ConfigError(f"{source}: unknown setting '{where}': "
                                  f"allowed here are {', '.join(sorted(allowed))}")


def _apply_environment(raw: dict, env: Mapping[str, str]) -> dict[str, str]:
    """Overlay the seed's variables on the file; returns setting -> variable for messages."""
    origin: dict[str, str] = {}

    def put(var: str, section: str | None, key: str, convert=lambda v: v) -> None:
        if var in env:
            table = raw if section is None else raw.setdefault(section, {})
            table[key] = convert(env[var])
            origin[f"{section}.{key}" if section else key] = var

    put("DALI_DIR", None, "dir")
    put("DALI_TAG", None, "tag")
    put("DALI_ORIGINAL", None, "original")
    put("DALI_CLONES", None, "clones", lambda v: v.split())
    put("DALI_NETWORK", "network", "name")
    put("DALI_MEM_GB", "node", "memory", lambda v: f"{v}G" if v.strip().isdigit() else v)
    put("DALI_VCPUS", "node", "vcpus")
    put("LIBVIRT_DEFAULT_URI", None, "uri")
    return origin


def load(path: Path | None = None, env: Mapping[str, str] | None = None,
         repo: Path = REPO) -> Cluster:
    """Read `path` (default: the checkout's cluster.toml), overlay `env`, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    env = {} if env is None else env
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: pass config=PATH to an existing file")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}): fix the file")
    _check_known_keys(raw, str(path))
    origin = _apply_environment(raw, env)

    def where(setting: str) -> str:
        return f"{origin[setting]} (setting {setting})" if setting in origin else f"{path}: {setting}"

    def get(section: str | None, key: str, default: Any = None) -> Any:
        table = raw if section is None else raw.get(section, {})
        return table.get(key, default)

    tag = get(None, "tag", "ivp")
    if not isinstance(tag, str) or not _NAME.match(tag) or len(tag) > 16:
        raise ConfigError(f"{where('tag')} = {tag!r}: use 1-16 lowercase letters, digits or '-', "
                          "starting with a letter")
    original = get(None, "original", "a")
    clones = get(None, "clones", [])
    if not isinstance(clones, list):
        raise ConfigError(f"{where('clones')} = {clones!r}: must be a list of suffixes like [\"b\", \"c\"]")
    for setting, suffix in [("original", original)] + [("clones", c) for c in clones]:
        if not isinstance(suffix, str) or not _SUFFIX.match(suffix):
            raise ConfigError(f"{where(setting)}: suffix {suffix!r} must be lowercase letters or digits")
    if len(set(clones)) != len(clones):
        raise ConfigError(f"{where('clones')} = {clones!r}: a suffix appears twice")
    if original in clones:
        raise ConfigError(f"{where('clones')}: {original!r} is the original's suffix; pick another")

    data_dir = get(None, "dir")
    if data_dir in (None, ""):
        data_dir = DEFAULT_DATA_ROOT / tag
    else:
        # The seed writes DALI_DIR=IVSHPMEM (relative to the shell); a file's relative path is
        # relative to that file.
        base = Path.cwd() if "dir" in origin else path.parent
        data_dir = (base / Path(data_dir).expanduser()).resolve()

    uri = get(None, "uri", "qemu:///system")
    accel = _choice(get(None, "accel", "auto"), where("accel"), ("auto", "kvm", "tcg"))

    network = _load_network(raw.get("network", {}), where)

    fam_size = parse_size(get("fam", "size", "1G"), where("fam.size"))
    # QEMU maps the FAM in 2 MiB pages for fsdax; ndctl needs room for its info block and memmap.
    if fam_size < 32 * MiB or fam_size % (2 * MiB):
        raise ConfigError(f"{where('fam.size')} = {fam_size} bytes: must be a multiple of 2M "
                          "and at least 32M")
    memory = parse_size(get("node", "memory", "1G"), where("node.memory"))
    if memory < 256 * MiB or memory % MiB:
        raise ConfigError(f"{where('node.memory')} = {memory} bytes: must be whole MiB, at least 256M")
    # The seed's 2 GiB is exactly RAM + NVDIMM; follow that unless the file says otherwise.
    max_memory = parse_size(get("node", "max_memory", memory + fam_size), where("node.max_memory"))
    slots = _int(get("node", "memory_slots", 2), where("node.memory_slots"), 1)
    vcpus = _int(get("node", "vcpus", 1), where("node.vcpus"), 1)
    if memory + fam_size > max_memory:
        raise ConfigError(f"{where('node.max_memory')} = {max_memory} bytes cannot hold node.memory "
                          f"({memory}) plus the NVDIMM fam.size ({fam_size}): raise node.max_memory "
                          f"to at least {memory + fam_size} bytes")

    image = _load_image(raw.get("image", {}), where, path.parent)
    clone_mode = _choice(get("clone", "mode", "linked"), where("clone.mode"), ("linked", "copy"))
    template = Path(get("apparmor", "template", "/etc/apparmor.d/libvirt/TEMPLATE.qemu"))
    if not template.is_absolute():
        raise ConfigError(f"{where('apparmor.template')} = {str(template)!r}: must be an absolute path")
    boot_timeout = _int(get("timeouts", "boot", 900), where("timeouts.boot"), 1)
    shutdown_timeout = _int(get("timeouts", "shutdown", 180), where("timeouts.shutdown"), 1)

    return Cluster(
        tag=tag, original=original, clones=tuple(clones), data_dir=Path(data_dir),
        state_dir=repo / "state" / tag, uri=uri, accel=accel, network=network,
        fam_size=fam_size, memory=memory, max_memory=max_memory, memory_slots=slots,
        vcpus=vcpus, image=image, clone_mode=clone_mode, apparmor_template=template,
        boot_timeout=boot_timeout, shutdown_timeout=shutdown_timeout, source=str(path),
    )


def _load_network(table: dict, where) -> Network:
    name = table.get("name", "ivp")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where('network.name')} = {name!r}: use lowercase letters, digits or '-'")
    forward = _choice(table.get("forward", "nat"), where("network.forward"), ("nat", "none"))
    prefix = _int(table.get("prefix", 24), where("network.prefix"), 8)
    if prefix > 30:
        raise ConfigError(f"{where('network.prefix')} = {prefix}: must be 8..30")
    try:
        host = ipaddress.IPv4Address(table.get("address", "192.168.7.254"))
        start = ipaddress.IPv4Address(table.get("dhcp_start", "192.168.7.1"))
        end = ipaddress.IPv4Address(table.get("dhcp_end", "192.168.7.20"))
    except ValueError as e:
        raise ConfigError(f"{where('network.address')}/dhcp_start/dhcp_end: {e}: use IPv4 addresses")
    net = ipaddress.IPv4Network(f"{host}/{prefix}", strict=False)
    for setting, addr in (("network.dhcp_start", start), ("network.dhcp_end", end)):
        if addr not in net:
            raise ConfigError(f"{where(setting)} = {addr} is outside {net}: pick an address in it")
    if int(start) > int(end):
        raise ConfigError(f"{where('network.dhcp_start')} = {start} is after dhcp_end {end}: swap them")
    if int(start) <= int(host) <= int(end):
        raise ConfigError(f"{where('network.address')} = {host} lies inside the DHCP range "
                          f"{start}-{end}: move it out")
    return Network(name, forward, str(host), prefix, str(start), str(end))


def _load_image(table: dict, where, base: Path) -> Image:
    path = table.get("path") or None
    if path is not None:
        path = (base / Path(path).expanduser()).resolve()
        if not path.is_file():
            raise ConfigError(f"{where('image.path')} = {str(path)!r} does not exist: "
                              "point it at a qcow2 file, or remove it to build a Debian image")
    extra = table.get("extra_packages", [])
    if not isinstance(extra, list) or not all(isinstance(p, str) and p for p in extra):
        raise ConfigError(f"{where('image.extra_packages')}: must be a list of package names")
    suite = table.get("suite", "bookworm")
    if not isinstance(suite, str) or not _NAME.match(suite):
        raise ConfigError(f"{where('image.suite')} = {suite!r}: must be a Debian suite like 'bookworm'")
    mirror = table.get("mirror", "")
    if mirror and not re.match(r"^(https?|file)://", mirror):
        raise ConfigError(f"{where('image.mirror')} = {mirror!r}: must be an http(s):// or file:// URL")
    disk_size = parse_size(table.get("disk_size", "8G"), where("image.disk_size"))
    if disk_size < 2 * GiB:
        raise ConfigError(f"{where('image.disk_size')}: must be at least 2G (the tree is ~0.8G)")
    return Image(path, suite, mirror, str(table.get("http_proxy", "")), tuple(extra), disk_size)
