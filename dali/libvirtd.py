"""Where the cluster's libvirtd runs, and so how this machine reaches its guests' network.

Three cases, from the uri:
  qemu:///system                  this machine's libvirtd, found by its pid file (or /proc);
  qemu+unix:///system?socket=S    the libvirtd serving socket S on this machine, found by
                                  asking the socket who is at the other end (SO_PEERCRED);
  qemu+ssh://[user@]host[:port]/  a libvirtd on another machine: its guests are reached by
                                  ssh through that host (ProxyJump), or through `nc` run in
                                  remote.netns there.
A libvirtd on this machine may run in a network namespace of its own (scripts/setup puts it in
"dali"): its guests' addresses exist only there, and from the host's own namespace they would
be routed off the machine. Its namespace is entered with `ip netns exec NAME` when it has a
name, `nsenter --net=/proc/PID/ns/net` when not.
"""

from __future__ import annotations

import os
import shlex
import socket
import struct
from pathlib import Path

from dali.cluster import SSH_TRANSPORTS, Cluster, LibvirtUri, read_uri
from dali.text import is_digits

PID_FILE = Path("/run/libvirtd.pid")  # libvirtd's own, however it was started


def _candidates():
    """The pid libvirtd wrote, then every process: the pid file spares scanning /proc, which
    took 5 ms of every doit with 70 processes running and grows with them."""
    try:
        yield PID_FILE.read_text().strip()
    except OSError:
        pass
    yield from (p for p in os.listdir("/proc") if is_digits(p))


def _system_pid() -> int | None:
    for pid in _candidates():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "libvirtd":
                return int(pid)
        except (OSError, ValueError):
            continue
    return None


def _socket_pid(path: str) -> int | None:
    """The process listening on the unix socket at `path` (the kernel records its credentials
    when it listens; a connection reads them)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return None
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0] or None


def local_pid(uri: str) -> int | None:
    """The pid of the uri's libvirtd if it runs on this machine; None if not, or not found."""
    parts = read_uri(uri)
    if parts.host:
        return None
    socket_path = dict(parts.parameters).get("socket")
    return _socket_pid(socket_path) if socket_path else _system_pid()


def namespace_prefix(pid: int | None) -> list[str]:
    """The command prefix that runs a program in the network namespace of process `pid`, or []
    if it shares ours (or pid is None)."""
    if pid is None:
        return []
    try:
        ours, theirs = os.readlink("/proc/self/ns/net"), os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return []
    if theirs == ours:
        return []
    inode = int(theirs.split("[")[1].rstrip("]"))
    for named in sorted(Path("/run/netns").glob("*")) if Path("/run/netns").is_dir() else []:
        if named.stat().st_ino == inode:
            return ["ip", "netns", "exec", named.name]
    return ["nsenter", f"--net=/proc/{pid}/ns/net"]


def route_table(uri: str) -> Path | None:
    """The routing table the uri's libvirtd sees, if it runs on this machine."""
    pid = local_pid(uri)
    if pid is None:
        return None if read_uri(uri).host else Path("/proc/net/route")
    return Path(f"/proc/{pid}/net/route")


def _ssh_as_libvirt_does(uri: LibvirtUri) -> list[str]:
    """ssh with the key (keyfile=) and host key policy (no_verify=1) the uri gives libvirt's ssh
    transports: the jump to the nodes reaches the same host, so it logs in the same way. tls's
    no_verify= is about certificates, not ssh. Never command=: the settings refuse it, a
    program libvirt would run as root."""
    if uri.transport not in SSH_TRANSPORTS:
        return ["ssh"]
    parameters = dict(uri.parameters)
    ssh = ["ssh"]
    if parameters.get("keyfile"):
        ssh += ["-i", parameters["keyfile"]]
    if parameters.get("no_verify") == "1":
        ssh += ["-o", "StrictHostKeyChecking=no"]
    return ssh


def _to_node(words: list[str]) -> str:
    """A ProxyCommand: `words`, each one word for the shell ssh runs it with, and then nc to the
    node's address and port. ssh reads '%' in a ProxyCommand as its own %h, %p, ... first: a
    '%' of the uri's is written %%."""
    return " ".join(shlex.quote(w) for w in [*words, "nc"]).replace("%", "%%") + " %h %p"


def ssh_proxy(cluster: Cluster) -> str | None:
    """ssh_config's ProxyCommand to the nodes (%h %p: a node's address and port), or None
    where they are reachable from here as they are."""
    uri = read_uri(cluster.uri)
    if uri.host:
        login = ["-l", uri.user] if uri.user else []
        port = ["-p", uri.port] if uri.port else []
        there = ["ip", "netns", "exec", cluster.remote_netns] if cluster.remote_netns else []
        # -W would be ProxyJump's own forwarding; nc lets the forward start in remote.netns.
        # "--": nothing after it is an option of ssh's, whatever the host's name.
        return _to_node([*_ssh_as_libvirt_does(uri), *login, *port, "--", uri.host, *there])
    prefix = namespace_prefix(local_pid(cluster.uri))
    return _to_node(prefix) if prefix else None
