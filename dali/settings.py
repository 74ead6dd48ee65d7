"""Every setting dali has, declared once: key, environment variable, type, default, one-line doc.

Loading (cluster.toml), the environment overlay (the seed's DALI_* variables), validation, the
README's settings table and the commented cluster.toml all come from SETTINGS below. load()
reads, overlays and validates everything before anything exists, and returns the one frozen
Cluster (dali/cluster.py) that every stage receives. A bad value raises ConfigError: one line
naming the setting, where it came from, and what is allowed.

    python -m dali.settings table     # the README's settings table
    python -m dali.settings toml      # cluster.toml, every setting commented out at its default
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from dali.cluster import (DEFAULT_DATA_ROOT, REPO, SSH_TRANSPORTS, Cluster, Filesystem, Image, Kernel, Network,
                          LibvirtUri, is_remote, read_uri)
from dali.coherence.model import NODES_MAX as COHERENCE_NODES
from dali.errors import DaliError

DEFAULT_CONFIG = REPO / "cluster.toml"
MiB = 1 << 20
GiB = 1 << 30


class ConfigError(DaliError):
    """A setting is wrong; the message names it and what is allowed."""


# --- types: each turns a raw value into a checked one, or says in a few words what it wants ------

class Invalid(ValueError):
    """Raised by a type: its message is what the setting accepts."""


class Text(NamedTuple):
    pattern: str = r".*"
    wants: str = "text"
    max_len: int = 4096

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(self.pattern, value) or len(value) > self.max_len:
            raise Invalid(f"use {self.wants}")
        _refuse_unprintable(value)
        return value


def _refuse_unprintable(value: str) -> None:
    """Every character one that no line-based file, fstab, kernel command line or terminal
    reads as a line break or a control: Python's own splitlines() breaks at \r, \v, \f,
    \x1c-\x1e, \x85, U+2028 and U+2029 as well as \n, and a byte that is not UTF-8 (a
    non-UTF-8 environment variable) arrives as a lone surrogate. str.isprintable() refuses
    them all, and every other control and format character, and lets the space through."""
    bad = sorted({c for c in value if not c.isprintable()})
    if bad:
        raise Invalid(f"contains {', '.join(repr(c) for c in bad)}: a control, line-break or "
                      "non-UTF-8 character; write it without")


class Whole(NamedTuple):
    minimum: int
    maximum: int | None = None

    def parse(self, value: Any) -> int:
        text = str(value).strip() if isinstance(value, (int, str)) else ""
        # At most 18 digits: Python refuses to read more than 4300 as an int, with a traceback.
        if isinstance(value, bool) or not re.fullmatch(r"-?\d{1,18}", text):
            raise Invalid(self._wants())
        n = int(text)
        if n < self.minimum or (self.maximum is not None and n > self.maximum):
            raise Invalid(self._wants())
        return n

    def _wants(self) -> str:
        upper = f" and <= {self.maximum}" if self.maximum is not None else ""
        return f"must be a whole number >= {self.minimum}{upper}"


_SIZE = re.compile(r"\s*(\d{1,18})\s*([KMGT]?)(i?B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}


def parse_size(value: Any) -> int:
    """'1G', '512M', '2GiB' or a number of bytes -> bytes (binary units, as fallocate -l)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 60:
        return value
    m = _SIZE.fullmatch(str(value)) if isinstance(value, str) else None
    if not m:
        raise Invalid("is not a size: write e.g. '1G', '512M' or a number of bytes")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


class Size(NamedTuple):
    minimum: int
    multiple_of: int = 1

    def parse(self, value: Any) -> int:
        n = parse_size(value)
        if n < self.minimum or n % self.multiple_of:
            multiple = f"a multiple of {_human(self.multiple_of)} and " if self.multiple_of > 1 else ""
            raise Invalid(f"must be {multiple}at least {_human(self.minimum)}")
        return n


class Choice(NamedTuple):
    allowed: tuple[str, ...]

    def parse(self, value: Any) -> str:
        if value not in self.allowed:
            raise Invalid(f"is not allowed: use one of {', '.join(self.allowed)}")
        return value


class Names(NamedTuple):
    """A list of short names (clone suffixes, package names), each matching `item`."""
    item: Text
    max_items: int = 1000

    def parse(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise Invalid(f'must be a list like ["b", "c"] of {self.item.wants}')
        if len(value) > self.max_items:
            raise Invalid(f"has {len(value)} items: at most {self.max_items}")
        for v in value:
            if not isinstance(v, str) or not re.fullmatch(self.item.pattern, v):
                raise Invalid(f"{v!r} is not {self.item.wants}")
        if len(set(value)) != len(value):
            raise Invalid("names an item twice")
        return tuple(value)


class FilePath(NamedTuple):
    absolute: bool = False
    inside: str = ""  # if set: the (normalised) path must lie below this directory

    def parse(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid('must be a path in quotes, e.g. "/srv/dali"')
        _refuse_unprintable(value)
        if len(value.encode()) > 4000 or any(len(part.encode()) > 255 for part in value.split("/")):
            raise Invalid("is longer than a path can be (a name of at most 255 bytes, 4000 in all)")
        if self.absolute and not value.startswith("/"):
            raise Invalid("must be an absolute path")
        if self.inside and not posixpath.normpath(value).startswith(self.inside + "/"):
            raise Invalid(f"must be a file under {self.inside}/")
        return value


class GuestPath(NamedTuple):
    """A directory in every node that fstab (and the kernel command line, and a shell) carries
    as it is: absolute, normalised, of plain characters, and none the node needs for itself."""

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._+@/-]*", value):
            raise Invalid(f"{value!r} is not a plain absolute path: letters, digits and . _ + @ - "
                          "between slashes (fstab splits at a space)")
        if posixpath.normpath(value) != value:
            raise Invalid(f"{value!r}: write it as {posixpath.normpath(value)!r}")
        if _is_system(value, VIRTUAL_TREES):
            raise Invalid(f"{value!r} is a directory the node's own system needs: pick one of "
                          "your own, like /data or /mnt/src")
        return value


class Flag:
    def parse(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise Invalid("must be true or false")


class Shares:
    """[[share]] tables: a host directory (source, absolute) mounted in every node (target)."""

    def parse(self, value: Any) -> tuple[tuple[str, str], ...]:
        wants = 'must be [[share]] tables, each with source = "/host/dir" and target = "/in/node"'
        if not isinstance(value, list):
            raise Invalid(wants)
        shares = []
        for table in value:
            if not isinstance(table, dict) or set(table) != {"source", "target"}:
                raise Invalid(wants)
            source, target = table["source"], table["target"]
            if not (isinstance(source, str) and isinstance(target, str)
                    and source.startswith("/") and target.startswith("/")):
                raise Invalid(wants + " (absolute paths)")
            try:
                FilePath(absolute=True).parse(source)
            except Invalid as e:
                raise Invalid(f"source {source!r} {e}") from None
            try:
                GuestPath().parse(target)
            except Invalid as e:
                raise Invalid(f"target {e}") from None
            if not Path(source).is_dir():
                raise Invalid(f"source {source!r} is not a directory: make it, or fix the path")
            real = os.path.realpath(source)
            if _MARKUP & set(real):
                raise Invalid(f"source {source!r} holds one of ' < > & \", which XML reads as markup: "
                              "share a directory without them")
            if _is_system(real, VIRTUAL_TREES):
                raise Invalid(f"source {source!r} is the host's own system directory {real}: every "
                              "node (running a kernel under development, as root) could write "
                              "there; share a directory of your own")
            shares.append((real, target))
        targets = [t for _, t in shares]
        if len(set(targets)) != len(targets):
            raise Invalid("two shares have the same target")
        return tuple(shares)


# Where a cluster's network may lie: RFC 1918's private ranges. Nothing else: a public or
# loopback subnet on a libvirt bridge would shadow real addresses (no traffic may leave the
# machine), a multicast one is no subnet at all.
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


class IPv4:
    """An IPv4 address in quotes, or "" for "dali picks one"."""

    def parse(self, value: Any) -> str:
        if value == "":
            return ""
        try:
            return str(ipaddress.IPv4Address(value if isinstance(value, str) else ""))
        except ValueError:
            raise Invalid('must be an IPv4 address in quotes, e.g. "192.168.7.254", or "" '
                          "to let dali pick") from None


_SSH_AUTH = "(agent|privkey|password|keyboard-interactive)"
_ON_OFF = Choice(("0", "1"))

# The uri parameters dali passes on to libvirt: the transports each is for, and its value's type.
# Every other is refused: _REFUSED_PARAMETERS says why for libvirt's own, and one libvirt does
# not know it passes on to the driver, unchecked.
URI_PARAMETERS: dict[str, tuple[tuple[str, ...], Any]] = {
    # Over ssh, libvirt hands the socket to a shell on the host: plain characters only.
    "socket": (("unix", *SSH_TRANSPORTS), Text(r"/[A-Za-z0-9._+@/-]*", "an absolute path of letters, "
                                                "digits and . _ + @ -")),
    "mode": (("unix", *SSH_TRANSPORTS), Choice(("auto", "direct", "legacy"))),
    # Absolute: ssh_config's ProxyCommand copies it, and runs wherever the user starts ssh.
    "keyfile": (SSH_TRANSPORTS, FilePath(absolute=True)),
    "no_verify": (("ssh", "tls"), _ON_OFF),
    "no_tty": (("ssh",), _ON_OFF),
    "known_hosts": (("libssh", "libssh2"), FilePath(absolute=True)),
    "known_hosts_verify": (("libssh", "libssh2"), Choice(("normal", "auto", "ignore"))),
    "sshauth": (("libssh", "libssh2"), Text(rf"{_SSH_AUTH}(,{_SSH_AUTH})*", "a comma-separated list "
                                            "of agent, privkey, password, keyboard-interactive")),
    "pkipath": (("tls",), FilePath(absolute=True)),
}
_REFUSED_PARAMETERS = {
    "command": "names a program libvirt runs here, as root, when it connects: remove it (for "
               "another ssh, put it first in PATH)",
    "netcat": "names a program libvirt runs on the libvirt host: remove it",
    "proxy": "picks the program libvirt runs on the libvirt host: remove it",
    "name": "hands the libvirt host another uri to open: remove it",
}


class Uri:
    """A libvirt URI that libvirt, dali and ssh (reading the ssh_config made from it) all read
    alike, and that names no program to run. The ext transport runs one; command= and
    netcat= name one for the others."""
    form = Text(r"(qemu|test)(\+(unix|ssh|libssh|libssh2|tls|tcp))?://\S*",
                "a libvirt URI like qemu:///system or qemu+unix:///system?socket=PATH "
                "(transports unix, ssh, libssh, libssh2, tls, tcp; not ext)")

    def parse(self, value: Any) -> str:
        uri = self.form.parse(value)
        try:
            parts = read_uri(uri)
        except ValueError as e:
            raise Invalid(str(e)) from None
        _check_uri_place(parts)
        _check_uri_parameters(parts)
        return uri


def _check_uri_place(uri: LibvirtUri) -> None:
    for what, text in (("user", uri.user), ("host", uri.host), ("path", uri.path)):
        try:
            _refuse_unprintable(text)
        except Invalid as e:
            raise Invalid(f"its {what} (decoded) {e}") from None
    if uri.fragment:
        raise Invalid("has a #fragment, which libvirt does not read: remove it")
    if uri.port and not (re.fullmatch(r"[0-9]{1,5}", uri.port) and 1 <= int(uri.port) <= 65535):
        brackets = " (an IPv6 address goes in brackets: [::1]:22)" if ":" in uri.port else ""
        raise Invalid(f"port {_shown(uri.port)} is not a number from 1 to 65535{brackets}")
    if uri.host:
        _check_uri_host(uri)
    elif uri.user or uri.port:
        raise Invalid("names a user or a port but no host: add the host, or remove them")


def _check_uri_host(uri: LibvirtUri) -> None:
    if uri.transport == "unix":
        raise Invalid("qemu+unix reaches a socket of this machine: remove the host, or use qemu+ssh")
    if uri.host.startswith("-"):
        raise Invalid(f"host {_shown(uri.host)} starts with '-', which ssh reads as an option: give "
                      "the host's name or address")
    if not (_is_ipv6(uri.host) if ":" in uri.host else re.fullmatch(r"[A-Za-z0-9_.-]+", uri.host)):
        raise Invalid(f"host {_shown(uri.host)} is neither a host name (letters, digits, '.', '-', "
                      "'_') nor an IPv6 address in brackets")
    if ":" in uri.user:
        raise Invalid("holds a password (user:password@), which would be copied into ssh_config: "
                      "log in with a key (keyfile=) or ssh-agent")


def _is_ipv6(host: str) -> bool:
    address, _, zone = host.partition("%")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return not zone or bool(re.fullmatch(r"[A-Za-z0-9_.-]+", zone))


def _check_uri_parameters(uri: LibvirtUri) -> None:
    names = [name for name, _ in uri.parameters]
    for name, value in uri.parameters:
        if name in _REFUSED_PARAMETERS:
            raise Invalid(f"parameter {name}= {_REFUSED_PARAMETERS[name]}")
        if name not in URI_PARAMETERS:
            raise Invalid(f"parameter {_shown(name)} is not one dali passes on to libvirt: remove it "
                          f"(allowed: {', '.join(URI_PARAMETERS)})")
        transports, kind = URI_PARAMETERS[name]
        if uri.transport not in transports:
            raise Invalid(f"parameter {name}= is for the {', '.join(transports)} transports, not "
                          f"{uri.transport}: remove it")
        if names.count(name) > 1:
            raise Invalid(f"gives parameter {name}= twice: keep one")
        try:
            kind.parse(value)
        except Invalid as e:
            raise Invalid(f"parameter {name}={_shown(value)}: {e}") from None


# The host's system directories. dir is never one of them nor below a tree; a share's source
# is never one of them (a node writing into the host's /etc or /) nor below a virtual tree;
# nothing is mounted over one of them in a node (it would not boot).
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                "/run", "/sbin", "/sys", "/usr")
VIRTUAL_TREES = ("/dev", "/proc", "/run", "/sys")
SYSTEM_DIRS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var", "/var/cache",
               "/var/lib", "/var/log", "/var/tmp", "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin",
               "/usr/share", "/usr/src", *SYSTEM_TREES)


def _is_system(path: str, trees: tuple[str, ...]) -> bool:
    """path is one of SYSTEM_DIRS, or lies below one of trees."""
    return path in SYSTEM_DIRS or any(path.startswith(t + "/") for t in trees)


def _human(n: int) -> str:
    for unit, factor in (("G", GiB), ("M", MiB)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} bytes"


# --- the declaration --------------------------------------------------------------------------

class Derived(NamedTuple):
    """A default computed from other settings; `doc` is how the README shows it."""
    doc: str
    compute: Callable[[dict], Any]


class Setting(NamedTuple):
    key: str                 # "section.name", or "name" at the top of cluster.toml
    type: Any                # one of the types above: parse(value) -> checked value
    default: Any             # a value as cluster.toml would hold it, or Derived
    doc: str                 # one line: what it means (README table, cluster.toml comment)
    env: str | None = None   # the seed's environment variable that overrides the file
    from_env: Callable[[str], Any] = str  # the variable's text -> a value of the file's kind


_NAME = Text(r"[a-z][a-z0-9-]{0,15}", "1-16 lowercase letters, digits or '-', starting with a letter")
_NAME_OR_EMPTY = Text(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?",
                      "a network namespace's name (letters, digits, '_', '.', '-'), or empty")
_SUFFIX = Text(r"[a-z0-9]{1,8}", "a suffix of 1-8 lowercase letters or digits")
# Debian policy 5.6.1; anything else is a typo, or an option slipped into debootstrap's --include.
_PACKAGE = Text(r"[a-z0-9][a-z0-9+.-]+", "a Debian package name (lowercase, e.g. 'vim')")


def _gigabytes(text: str) -> str:
    """DALI_MEM_GB=2 means 2G, as in the seed; a size with a unit is taken as written."""
    return f"{text.strip()}G" if text.strip().isdigit() else text


SETTINGS: tuple[Setting, ...] = (
    Setting("tag", _NAME, "ivp", "cluster name: domains are tag + suffix, state lives in state/<tag>/",
            env="DALI_TAG"),
    Setting("original", _SUFFIX, "a", "the original node's suffix (booted once, namespace made fsdax)",
            env="DALI_ORIGINAL"),
    Setting("clones", Names(_SUFFIX, max_items=250), ["b", "c"], "one clone per suffix, cloned from the shut-off original",
            env="DALI_CLONES", from_env=str.split),
    Setting("dir", FilePath(), Derived("/var/lib/dali/<tag>", lambda v: str(DEFAULT_DATA_ROOT / v["tag"])),
            "where the FAM and the disks live; relative to the shell (env) or to the file",
            env="DALI_DIR"),
    Setting("uri", Uri(), "qemu:///system",
            "the libvirt connection: this machine's, or a server's (qemu+ssh://root@host/system; "
            "see docs/remote.md)", env="LIBVIRT_DEFAULT_URI"),
    Setting("accel", Choice(("auto", "kvm", "tcg")), "auto",
            "auto uses KVM only if a KVM guest really boots here; kvm or tcg force one"),
    Setting("share", Shares(), [],
            "[[share]] source = \"/host/dir\", target = \"/in/node\": mounted read-write in "
            "every node (virtiofs)"),
    Setting("network.name", _NAME, Derived("the tag", lambda v: v["tag"]),
            "the libvirt network the nodes share", env="DALI_NETWORK"),
    Setting("network.forward", Choice(("nat", "none")), "nat",
            "nat (the seed's) or none (an isolated network)"),
    Setting("network.address", IPv4(), "",
            "the host's address on the network; empty: a free subnet is picked (192.168.7.0/24, "
            "the seed's, if free), then kept"),
    Setting("network.prefix", Whole(8, 30), 24, "the network's prefix length"),
    Setting("network.dhcp_start", IPv4(), "", "first address DHCP hands out; empty: the subnet's first"),
    Setting("network.dhcp_end", IPv4(), "", "last address DHCP hands out; empty: the subnet's last "
            "but the host's"),
    # QEMU maps the FAM in 2 MiB pages; ndctl needs room for its info block and memmap.
    Setting("fam.size", Size(32 * MiB, 2 * MiB), "1G",
            "the shared NVDIMM; never resized or recreated once it exists"),
    Setting("node.memory", Size(256 * MiB, MiB), "1G", "guest RAM, all in NUMA cell 0 (DALI_MEM_GB: in GiB)",
            env="DALI_MEM_GB", from_env=_gigabytes),
    # The seed's 2 GiB is exactly RAM + NVDIMM.
    Setting("node.max_memory", Size(256 * MiB, MiB),
            Derived("node.memory + fam.size", lambda v: v["node.memory"] + v["fam.size"]),
            "<maxMemory>: must hold node.memory plus the NVDIMM"),
    Setting("node.memory_slots", Whole(1, 256), 2, "<maxMemory slots>"),
    Setting("node.vcpus", Whole(1, 256), 1, "virtual CPUs per node", env="DALI_VCPUS"),
    Setting("image.path", FilePath(), "",
            "boot your own qcow2 from its own disk instead of building a Debian image"),
    Setting("image.suite", _NAME, "bookworm", "the Debian suite of the built image"),
    Setting("image.mirror", Text(r"((https?|file)://\S+)?", "an http(s):// or file:// URL, or nothing"), "",
            "Debian mirror for the image; empty: the one the host's apt uses"),
    Setting("image.http_proxy", Text(r"(https?://\S+)?", "an http(s):// URL or nothing"), "",
            "proxy for debootstrap"),
    Setting("image.extra_packages", Names(_PACKAGE), [], "more Debian packages in the image"),
    Setting("image.disk_size", Size(2 * GiB, MiB), "8G", "virtual size of each node's root disk (sparse)"),
    Setting("device.mode", Choice(("fsdax", "devdax", "raw")), "fsdax",
            "the shared device: fsdax (/dev/pmem0, the seed's), devdax (/dev/dax0.0, for famfs and "
            "other user-space DAX) or raw; set once, on the original"),
    Setting("device.style", Choice(("seed", "native")), "seed",
            "seed: the seed's qemu:commandline stanzas and an AppArmor template rule; native: "
            "libvirt's own <memory model='nvdimm'>, the template left alone"),
    Setting("device.namespace_from", Choice(("cache", "original")), "cache",
            "where a new FAM's namespace comes from: cache, the one this checkout's original made "
            "for the same fam.size, device.mode and kernel, written in without a boot (the "
            "original boots when there is none); original: the original boots and ndctl makes it, "
            "every time (the seed's way)"),
    Setting("device.coherence", Choice(("off", "strict", "cached")), "off",
            "off: the host's coherent memory, as the nodes' QEMUs share it; strict or cached: "
            "every node's QEMU checks each load, store and flush of the FAM against a model of "
            "non-coherent shared memory (docs/coherence.md; TCG only, nodes on this machine)"),
    Setting("fs.type", Choice(("none", "ocfs2")), "none",
            "a filesystem on the shared device, mounted on every node: none (the device as the seed "
            "leaves it) or ocfs2"),
    Setting("fs.mountpoint", GuestPath(), "/data", "where every node mounts it"),
    Setting("fs.slots", Whole(2, 255), Derived("8, or the node count if larger",
                                              lambda v: max(8, 1 + len(v["clones"]))),
            "OCFS2 node slots (mkfs.ocfs2 -N): nodes that can mount at once"),
    Setting("fs.heartbeat_threshold", Whole(7, 301), 31,
            "o2cb's O2CB_HEARTBEAT_THRESHOLD: a node that stops writing its disk heartbeat is dead "
            "after (N-1)*2 s (31: 60 s) and the others recover its journal; lower for quicker crash "
            "tests. Applies as nodes boot: doit restart"),
    Setting("kernel.path", FilePath(), "",
            "boot every node on this bzImage (arch/x86/boot/bzImage); empty: the image's kernel"),
    Setting("kernel.modules", FilePath(), "",
            "with kernel.path: the INSTALL_MOD_PATH holding lib/modules/<version>"),
    Setting("kernel.cmdline", Text(r"[^\n\"]*", "kernel arguments on one line"), "",
            "more kernel arguments for every node (nokaslr, dyndbg=..., ...)"),
    Setting("debug.gdb", Flag(), False,
            "a gdb stub for every node, on a unix socket shown by doit status"),
    Setting("clone.mode", Choice(("linked", "copy")), "linked",
            "linked: qcow2 overlays on the frozen original; copy: standalone copies"),
    Setting("apparmor.template", FilePath(absolute=True, inside="/etc/apparmor.d"),
            "/etc/apparmor.d/libvirt/TEMPLATE.qemu",
            "libvirt's AppArmor template, where the FAM is allowed"),
    Setting("torture.known_failures", FilePath(), "known-failures.toml",
            "the failures doit torture expects, and why (relative to this file; the checkout ships "
            "one; a missing default file: none): a run that shows only these exits 0"),
    Setting("timeouts.boot", Whole(1), 900, "seconds from start until the guest agent answers"),
    Setting("timeouts.shutdown", Whole(1), 180, "seconds of graceful shutdown (guest agent, ACPI button) before a node is forced off"),
    Setting("remote.netns", _NAME_OR_EMPTY, "",
            "with a qemu+ssh or qemu+tls uri: the network namespace on that host where its "
            "libvirtd's networks live (scripts/setup's \"dali\"); empty: the host's own"),
)

BY_KEY = {s.key: s for s in SETTINGS}
SECTIONS = sorted({s.key.split(".")[0] for s in SETTINGS if "." in s.key})


# --- loading ------------------------------------------------------------------------------------

def load(path: Path | str | None = None, env: Mapping[str, str] | None = None,
         repo: Path = REPO) -> Cluster:
    """Read `path` (default: the checkout's cluster.toml), overlay `env`, validate everything."""
    path = Path(path) if path else DEFAULT_CONFIG
    env = {} if env is None else env
    given = _read(path)
    origin = {}  # key -> environment variable, for messages
    for s in SETTINGS:
        if s.env and s.env in env:
            given[s.key] = s.from_env(env[s.env])
            origin[s.key] = s.env

    def where(key: str) -> str:
        return f"{origin[key]} (setting {key})" if key in origin else f"{path}: {key}"

    values: dict[str, Any] = {}
    for s in SETTINGS:  # plain values first, then the defaults derived from them
        if s.key in given or not isinstance(s.default, Derived):
            values[s.key] = _parse(s, given.get(s.key, s.default), where)
    for s in SETTINGS:
        if s.key not in values:
            values[s.key] = s.default.compute(values)
    _check_together(values, where)
    cluster = _cluster(values, origin, path, repo)
    return cluster._replace(known_failures=_known_failures(values, "torture.known_failures" in given, path))


def _read(path: Path) -> dict[str, Any]:
    """cluster.toml flattened to {"section.key": value}; an unknown key is an error (typos)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: pass config=PATH to an existing file") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}): pass config=PATH to "
                          "a readable cluster file") from None
    except (tomllib.TOMLDecodeError, ValueError) as e:  # ValueError: an integer of 4300+ digits
        raise ConfigError(f"{path}: not valid TOML ({(str(e).splitlines() or [''])[0]}): fix the file") from None
    flat = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    for key in flat:
        if key not in BY_KEY:
            section = key.rsplit(".", 1)[0] if "." in key else ""
            allowed = sorted(k for k in BY_KEY if (k.rsplit(".", 1)[0] if "." in k else "") == section)
            raise ConfigError(f"{path}: unknown setting '{key}': allowed here are "
                              f"{', '.join(allowed + ([] if section else [f'[{s}]' for s in SECTIONS]))}")
    return flat


# In a path, these are AppArmor glob and quoting characters (a rule "/x/{a,b}/FAM" would allow
# other files), or break qemu's -object option list (a comma) or the rule's quotes.
_PATH_SPECIALS = set('*?[]{}^"\\,')  # (control characters: FilePath refuses them first)
# XML's own: every path reaches libvirt's XML through one escaping path (Jinja's autoescape,
# dali/render.py), and is refused here all the same, so that no mistake there can inject.
_MARKUP = set("'<>&\"")


def _check_data_dir(data_dir: Path, where: str) -> None:
    text = str(data_dir)
    if _is_system(text, SYSTEM_TREES):
        raise ConfigError(f"{where} = {text!r} is the host's own system directory: dali writes "
                          "the FAM and the disks there; pick a directory of its own, like "
                          "/var/lib/dali/<tag>")
    try:
        FilePath().parse(text)
    except Invalid as e:
        raise ConfigError(f"{where} = {text!r} {e}") from None
    bad = sorted((_PATH_SPECIALS | _MARKUP) & set(str(data_dir)))
    if bad:
        raise ConfigError(f"{where} = {str(data_dir)!r} contains {' '.join(repr(c) for c in bad)}, which AppArmor "
                          "reads as a pattern, qemu as a separator or XML as markup: pick a path "
                          "without * ? [ ] { } ^ \" ' < > & \\ or commas")


def _parse(s: Setting, value: Any, where) -> Any:
    try:
        return s.type.parse(value)
    except Invalid as e:
        raise ConfigError(f"{where(s.key)} = {_shown(value)}: {e}") from None


def _shown(value: Any) -> str:
    """repr(value), cut short to fit in a line."""
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:60] + f"... ({len(shown)} characters)"


def _check_together(v: dict, where) -> None:
    """Rules that span settings. Each names the setting to change."""
    if is_remote(v["uri"]):
        _check_remote(v, where)
    elif v["remote.netns"]:
        raise ConfigError(f"{where('remote.netns')} = {v['remote.netns']!r} is for a uri naming "
                          "another host: remove it (this machine's libvirtd is found by itself)")
    if v["original"] in v["clones"]:
        raise ConfigError(f"{where('clones')}: {v['original']!r} is the original's suffix; pick another")
    if v["node.memory"] + v["fam.size"] > v["node.max_memory"]:
        raise ConfigError(f"{where('node.max_memory')} = {v['node.max_memory']} bytes cannot hold "
                          f"node.memory ({v['node.memory']}) plus the NVDIMM fam.size ({v['fam.size']}): "
                          f"raise node.max_memory to at least {v['node.memory'] + v['fam.size']} bytes")
    _check_network(v, where)
    nodes = 1 + len(v["clones"])
    if v["device.coherence"] != "off":
        _check_coherence(v, where, nodes)
    if v["fs.type"] != "none" and v["fs.mountpoint"] in [t for _, t in v["share"]]:
        raise ConfigError(f"{where('share')}: a share's target is fs.mountpoint {v['fs.mountpoint']}: "
                          "mount the share elsewhere")
    if v["fs.type"] == "ocfs2":
        if v["device.mode"] != "fsdax":
            raise ConfigError(f"{where('fs.type')} = 'ocfs2' needs a block device: set device.mode "
                              f"= 'fsdax' (it is {v['device.mode']!r})")
        if v["fs.slots"] < nodes:
            raise ConfigError(f"{where('fs.slots')} = {v['fs.slots']} is fewer than the {nodes} nodes: "
                              f"raise fs.slots to at least {nodes} (a formatted device also needs "
                              f"`doit pssh --on {v['original']} tunefs.ocfs2 -N {nodes} /dev/pmem0`)")


def _check_coherence(v: dict, where, nodes: int) -> None:
    """What the coherence checker cannot do, refused before anything is made (docs/coherence.md)."""
    what = f"{where('device.coherence')} = {v['device.coherence']!r}"
    if v["accel"] == "kvm":
        raise ConfigError(f"{what} watches every load and store through QEMU's TCG plugins, which "
                          "KVM does not run: set accel = \"tcg\" or \"auto\", or device.coherence = \"off\"")
    if is_remote(v["uri"]):
        raise ConfigError(f"{what} runs dali's QEMU plugin and a model file shared by the nodes' "
                          f"QEMUs, both on this machine, not on {v['uri']}: set device.coherence = "
                          "\"off\", or run the cluster on this machine's libvirt")
    if nodes > COHERENCE_NODES:
        raise ConfigError(f"{what} models at most {COHERENCE_NODES} nodes (a line's state is 4 bits "
                          f"per node in one 32-bit word) and this cluster has {nodes}: remove "
                          "clones, or set device.coherence = \"off\"")


def _check_remote(v: dict, where) -> None:
    """What cannot work where the nodes are on another host, refused before anything is made."""
    uri = v["uri"]
    if v["device.style"] != "native":
        raise ConfigError(f"{where('device.style')} = {v['device.style']!r} needs a line in the libvirt "
                          f"host's AppArmor template, a file dali does not edit on another host "
                          f"({uri}): set device.style = \"native\" (libvirt then allows the FAM itself)")
    for key, why in (("image.path", "a qcow2 file of this machine"),
                     ("debug.gdb", "a gdb socket on the libvirt host")):
        if v[key]:
            raise ConfigError(f"{where(key)} is set, and {why} is not supported with a remote uri "
                              f"({uri}) yet: remove it, or run dali with the nodes' own libvirt")
    if v["share"]:
        raise ConfigError(f"{where('share')}: shares are directories of the machine that runs the "
                          f"nodes, which is not this one with uri {uri}: remove the [[share]] "
                          "entries")
    if read_uri(uri).driver == "test":
        raise ConfigError(f"{where('uri')} = {uri!r}: libvirt's test driver has no storage for a "
                          "remote cluster; use qemu+unix://, qemu+ssh:// or qemu+tls://")


def dhcp_range(address: str, prefix: int, start: str = "", end: str = "") -> tuple[str, str]:
    """The DHCP range of a network: as given, or every host address of the subnet but the
    host's own (the seed's host is the subnet's last address, x.x.x.254)."""
    net = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    host = ipaddress.IPv4Address(address)
    first, last = net.network_address + 1, net.broadcast_address - 1
    if not start:
        start = str(host + 1 if host == first else first)
    if not end:
        end = str(host - 1 if host == last else last)
    return start, end


def _check_network(v: dict, where) -> None:
    nodes = 1 + len(v["clones"])
    prefix = v["network.prefix"]
    if not v["network.address"]:
        if v["network.dhcp_start"] or v["network.dhcp_end"]:
            raise ConfigError(f"{where('network.dhcp_start')}: a DHCP range needs network.address "
                              "too: set both, or neither (dali then picks a free subnet)")
        room = 2 ** (32 - prefix) - 3  # minus network, broadcast and the host's address
        if room < nodes:
            raise ConfigError(f"{where('network.prefix')} = {prefix} leaves {room} addresses for "
                              f"{nodes} nodes: lower network.prefix")
        return
    host = ipaddress.IPv4Address(v["network.address"])
    net = ipaddress.IPv4Network(f"{host}/{prefix}", strict=False)
    if not any(net.subnet_of(r) for r in PRIVATE_RANGES):
        raise ConfigError(f"{where('network.address')} = {host}: {net} is not a private subnet; pick "
                          "one in 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (no node traffic may "
                          "reach other machines' addresses)")
    if host in (net.network_address, net.broadcast_address):
        raise ConfigError(f"{where('network.address')} = {host} is the "
                          f"{'network' if host == net.network_address else 'broadcast'} address of "
                          f"{net}: pick a host address, like {net.broadcast_address - 1}")
    start, end = (ipaddress.IPv4Address(a) for a in dhcp_range(
        str(host), prefix, v["network.dhcp_start"], v["network.dhcp_end"]))
    for key, addr in (("network.dhcp_start", start), ("network.dhcp_end", end)):
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            raise ConfigError(f"{where(key)} = {addr} is not a host address of {net}: pick one in it")
    if start > end:
        raise ConfigError(f"{where('network.dhcp_start')} = {start} is after dhcp_end {end}: swap them")
    if start <= host <= end:
        raise ConfigError(f"{where('network.address')} = {host} lies inside the DHCP range "
                          f"{start}-{end}: move it out")
    if int(end) - int(start) + 1 < nodes:
        raise ConfigError(f"{where('network.dhcp_end')}: the DHCP range {start}-{end} has "
                          f"{int(end) - int(start) + 1} addresses for {nodes} nodes: widen it")


def _real_path(raw: str, base: Path, where: str) -> Path:
    """raw (~ expanded; relative to base) with every symlink resolved: the path the kernel,
    AppArmor and qemu meet. A ~user that does not exist or a symlink loop is one line, and so is
    a path (or what its links lead to) with characters XML reads as markup."""
    try:
        real = (base / Path(raw).expanduser()).resolve()
    except (RuntimeError, OSError) as e:  # RuntimeError: no such ~user, a symlink loop
        raise ConfigError(f"{where} = {raw!r}: {e}: give a path that exists, or can") from None
    _refuse_markup(real, where)
    return real


def _refuse_markup(path: Path | str, where: str) -> None:
    bad = sorted(_MARKUP & set(str(path)))
    if bad:
        raise ConfigError(f"{where} = {str(path)!r} contains {' '.join(repr(c) for c in bad)}, which XML "
                          "reads as markup: rename it, or point to it through a path without them")


def _own_kernel(v: dict, path: Path) -> Kernel | None:
    if not v["kernel.path"]:
        if v["kernel.modules"]:
            raise ConfigError(f"{path}: kernel.modules is set but kernel.path is not: set both "
                              "(your bzImage and its INSTALL_MOD_PATH), or neither")
        return None
    bzimage = _real_path(v["kernel.path"], path.parent, f"{path}: kernel.path")
    if not bzimage.is_file():
        raise ConfigError(f"{path}: kernel.path = {str(bzimage)!r} is not a file: point it at your "
                          "arch/x86/boot/bzImage")
    if not v["kernel.modules"]:
        raise ConfigError(f"{path}: kernel.path needs kernel.modules too: the directory "
                          "`make modules_install INSTALL_MOD_PATH=DIR` wrote (DIR/lib/modules/...)")
    modules = _real_path(v["kernel.modules"], path.parent, f"{path}: kernel.modules")
    if not modules.is_dir():
        raise ConfigError(f"{path}: kernel.modules = {str(modules)!r} is not a directory: give "
                          "the INSTALL_MOD_PATH of `make modules_install`")
    return Kernel(bzimage, modules)


def _cluster(v: dict, origin: dict, path: Path, repo: Path) -> Cluster:
    # The seed writes DALI_DIR=IVSHPMEM, relative to the shell; a file's relative path is
    # relative to that file.
    where_dir = f"{origin['dir']} (setting dir)" if "dir" in origin else f"{path}: dir"
    if not v["dir"].strip():
        raise ConfigError(f"{where_dir} is empty: name the directory for the FAM and the disks, "
                          "or leave the setting out (/var/lib/dali/<tag>)")
    # The real path: AppArmor checks the file qemu opens after symlinks are followed, so the
    # rule, the domain XML and the marks all name that.
    if is_remote(v["uri"]):
        # A path on the libvirt host, which this machine cannot resolve: taken as written.
        if not Path(v["dir"]).is_absolute():
            raise ConfigError(f"{where_dir} = {v['dir']!r} is relative, and with uri {v['uri']} it "
                              "names a directory on the libvirt host: give an absolute path there")
        data_dir = Path(os.path.normpath(v["dir"]))
    else:
        data_dir = _real_path(v["dir"], Path.cwd() if "dir" in origin else path.parent, where_dir)
    _check_data_dir(data_dir, where_dir)
    if v["device.coherence"] != "off":
        # QEMU reads -plugin's arguments as comma-separated key=value pairs: a comma in the
        # plugin's path (under the checkout's state/cache/) would end it early. (dir's own
        # paths are refused with commas for every cluster.)
        if "," in str(repo):
            raise ConfigError(f"{path}: device.coherence hands QEMU a path under the checkout ({repo}) "
                              "in a comma-separated option: use a checkout whose path has no comma")
    for source, _ in v["share"]:
        for what, inside in (("dir", data_dir), ("the checkout", repo)):
            if inside == Path(source) or Path(source) in inside.parents:
                raise ConfigError(f"{path}: share source {source!r} holds {what} ({inside}): the "
                                  "nodes would write into the FAM, the disks or dali's state; "
                                  "share a directory beside it")
    image_path = None
    if v["image.path"]:
        image_path = _real_path(v["image.path"], path.parent, f"{path}: image.path")
        if not image_path.is_file():
            raise ConfigError(f"{path}: image.path = {str(image_path)!r} does not exist: point it "
                              "at a qcow2 file, or remove it to build a Debian image")
    return Cluster(
        tag=v["tag"], original=v["original"], clones=v["clones"], data_dir=data_dir,
        state_dir=repo / "state" / v["tag"], uri=v["uri"], accel=v["accel"],
        network=Network(v["network.name"], v["network.forward"], v["network.address"] or None,
                        v["network.prefix"], v["network.dhcp_start"] or None, v["network.dhcp_end"] or None),
        fam_size=v["fam.size"], memory=v["node.memory"], max_memory=v["node.max_memory"],
        memory_slots=v["node.memory_slots"], vcpus=v["node.vcpus"],
        image=Image(image_path, v["image.suite"], v["image.mirror"], v["image.http_proxy"],
                    v["image.extra_packages"], v["image.disk_size"]),
        device_mode=v["device.mode"], device_style=v["device.style"], coherence=v["device.coherence"],
        namespace_from=v["device.namespace_from"],
        fs=Filesystem(v["fs.type"], v["fs.mountpoint"], v["fs.slots"], v["fs.heartbeat_threshold"]),
        own_kernel=_own_kernel(v, path), kernel_args=v["kernel.cmdline"], shares=v["share"],
        gdb=v["debug.gdb"],
        clone_mode=v["clone.mode"], apparmor_template=Path(v["apparmor.template"]),
        boot_timeout=v["timeouts.boot"], shutdown_timeout=v["timeouts.shutdown"],
        remote_netns=v["remote.netns"],
    )


def _known_failures(v: dict, named: bool, path: Path) -> Path | None:
    """The baseline file: None when the setting is left at its default and no such file lies
    beside the config (a cluster file elsewhere has none until it names one)."""
    where = f"{path}: torture.known_failures"
    found = _real_path(v["torture.known_failures"], path.parent, where)
    if found.is_file():
        return found
    if named:
        raise ConfigError(f"{where} = {v['torture.known_failures']!r}: no such file: point it at "
                          "your baseline (the checkout's known-failures.toml, say), or remove it")
    return None


# --- what is generated from the declaration ------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _shown_default(s: Setting) -> str:
    if isinstance(s.default, Derived):
        return s.default.doc
    if s.default in ("", []):
        return "(none)"
    return f"`{_toml_value(s.default)}`"


def settings_table() -> str:
    """The README's settings table, one row per setting."""
    rows = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `{s.key}` | {f'`{s.env}`' if s.env else ''} | {_shown_default(s)} | {s.doc} |")
    return "\n".join(rows) + "\n"


def commented_toml() -> str:
    """cluster.toml: every setting at its default, commented out, under its section."""
    out = ["# dali's cluster file. Every setting is shown at its default, commented out: uncomment",
           "# a line to change it. The seed's environment variables (shown as 'env') override this file.",
           "# Generated by `python -m dali.settings toml` from dali/settings.py; the README's table",
           "# has the same rows.", ""]
    section = ""
    for s in SETTINGS:
        head, _, name = s.key.rpartition(".")
        if head != section:
            section = head
            out += ["", f"[{section}]"]
        env = f" (env {s.env})" if s.env else ""
        out.append(f"# {s.doc}{env}")
        if isinstance(s.default, Derived):
            out.append(f"# {name} =   # default: {s.default.doc}")
        else:
            out.append(f"# {name} = {_toml_value(s.default)}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "table"
    sys.stdout.write({"table": settings_table, "toml": commented_toml}[what]())
