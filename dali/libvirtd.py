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
from urllib.parse import parse_qs, urlsplit

from dali.cluster import Cluster

PID_FILE = Path("/run/libvirtd.pid")  # libvirtd's own, however it was started


def _candidates():
    """The pid libvirtd wrote, then every process: the pid file spares scanning /proc, which
    took 5 ms of every doit with 70 processes running and grows with them."""
    try:
        yield PID_FILE.read_text().strip()
    except OSError:
        pass
    yield from (p for p in os.listdir("/proc") if p.isdigit())


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
    parts = urlsplit(uri)
    if parts.netloc:
        return None
    sockets = parse_qs(parts.query).get("socket")
    return _socket_pid(sockets[0]) if sockets else _system_pid()


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
        return None if urlsplit(uri).netloc else Path("/proc/net/route")
    return Path(f"/proc/{pid}/net/route")


def _ssh_as_libvirt_does(query: str) -> list[str]:
    """ssh as the uri tells libvirt to run it (its ssh transport's parameters): the program
    (command=), the key (keyfile=), and no host key check (no_verify=1). The jump to the
    nodes reaches the same host as libvirt does, so it logs in the same way."""
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    ssh = [params.get("command") or "ssh"]
    if params.get("keyfile"):
        ssh += ["-i", params["keyfile"]]
    if params.get("no_verify") not in (None, "", "0"):
        ssh += ["-o", "StrictHostKeyChecking=no"]
    return ssh


def ssh_proxy(cluster: Cluster) -> str | None:
    """ssh_config's ProxyCommand to the nodes (%h %p: a node's address and port), or None
    where they are reachable from here as they are."""
    parts = urlsplit(cluster.uri)
    if parts.netloc:
        host = parts.hostname or ""
        login = ["-l", parts.username] if parts.username else []
        port = ["-p", str(parts.port)] if parts.port else []
        there = (["ip", "netns", "exec", cluster.remote_netns] if cluster.remote_netns else []) + ["nc", "%h", "%p"]
        # -W would be ProxyJump's own forwarding; nc lets the forward start in remote.netns.
        return " ".join(map(shlex.quote, [*_ssh_as_libvirt_does(parts.query), *login, *port, host, *there]))
    prefix = namespace_prefix(local_pid(cluster.uri))
    return " ".join([*map(shlex.quote, prefix), "nc", "%h", "%p"]) if prefix else None
