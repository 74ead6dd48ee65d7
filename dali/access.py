"""How a user and their tools reach the nodes: state/<tag>/ssh_config, state/<tag>/hosts and
state/<tag>/ssh/known_hosts.

Where libvirtd runs inside a network namespace (scripts/setup puts it in "dali"), the nodes'
addresses exist only there: from the host's own namespace they would be routed off the machine.
So ssh_config reaches them through a ProxyCommand that runs `nc` in libvirtd's namespace, or
through the libvirt host when it is another machine (dali/libvirtd.py), and
`ssh -F state/<tag>/ssh_config ivpb` works from here as it is. Without either it is plain ssh.

Each node's host key is made on the host with the node's identity disk (dali/identity_disk.py),
so known_hosts is written from it before the node first boots: ssh checks keys strictly and
never asks. A user's own image (image.path) keeps the keys it has; dali reads them from the
running nodes through the guest agent instead.
"""

from __future__ import annotations

from pathlib import Path

import libvirt

from dali import identity_disk, libvirtd
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.render import render, write_if_changed
from dali.storage import Storage
from dali.virt import Libvirt

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"


def known_hosts_file(cluster: Cluster) -> Path:
    return cluster.state_dir / "ssh" / "known_hosts"


def ssh_config_file(cluster: Cluster) -> Path:
    return cluster.state_dir / "ssh_config"


def inventory_file(cluster: Cluster) -> Path:
    return cluster.state_dir / "hosts"


def wanted_files(cluster: Cluster, files: Storage, addresses: dict[str, str]) -> dict[Path, str]:
    """The text ssh_config and hosts must have, for the nodes' current addresses, and
    known_hosts, from the nodes' identity disks."""
    nodes = [(n.name, addresses[n.name]) for n in cluster.nodes if n.name in addresses]
    proxy = libvirtd.ssh_proxy(cluster)
    wanted = {
        ssh_config_file(cluster): _render_lines("ssh_config.j2", path=ssh_config_file(cluster), nodes=nodes,
                                                key=cluster.ssh_key, known_hosts=known_hosts_file(cluster),
                                                proxy=proxy, tag=cluster.tag),
        inventory_file(cluster): _render_lines("hosts.j2", path=inventory_file(cluster), nodes=nodes,
                                               tag=cluster.tag),
    }
    if identity_disk.used(cluster, files):
        keys = {n.name: identity_disk.public_key(cluster, files, n) for n in cluster.nodes}
        wanted[known_hosts_file(cluster)] = "".join(f"{name} {key}\n" for name, key in sorted(keys.items())
                                                    if key)
    return wanted


def _render_lines(template: str, path: Path, **values) -> str:
    """The template's text, each value within the line the template gives it. ssh reads its
    config line by line (and a user's ~/.ssh/config may Include this one): a value holding a
    line break, from a uri the settings let through or a network definition read from libvirt,
    would add a line of its own, like `Match exec` running a command. Refused, whatever let it
    through, and nothing is written."""
    for name, value in {"path": path, **values}.items():
        for text in _texts(value):
            if not text.isprintable():  # (path.name is dali's own: safe to show as it is)
                raise DaliError(f"not writing {path.name}: {name} {text!r:.100} holds a control or "
                                "line-break character, which would start a line of its own there; fix "
                                "where it comes from (uri, the checkout's path, the network's definition)")
    return render(template, path=path, **values)


def _texts(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _texts(item)]
    return [] if value is None else [str(value)]


def are_current(cluster: Cluster, files: Storage, addresses: dict[str, str]) -> bool:
    return all(path.exists() and path.read_text() == text
               for path, text in wanted_files(cluster, files, addresses).items())


def write(cluster: Cluster, files: Storage, addresses: dict[str, str]) -> None:
    for path, text in wanted_files(cluster, files, addresses).items():
        write_if_changed(path, text)


# Without an identity disk (a user's own image, or an image kept from an older dali) the node
# makes or keeps its own key. An older dali image's clone boots with the key of the disk it was
# cloned from until its dali-ssh-host-keys has made its own and stamped it with the node's
# machine-id: only then is it the node's. ssh.service is Type=notify: active means listening.
# An image of the user's own, without that script, keeps whatever keys it has.
_KEY_IS_THIS_NODES = (f'test -s {HOST_KEY} && {{ test ! -e /usr/local/sbin/dali-ssh-host-keys || {{ '
                      f'test "$(cat /etc/ssh/dali-host-keys.machine-id 2>/dev/null)" = "$(cat /etc/machine-id)" '
                      f'&& systemctl is-active -q ssh.service; }}; }}')


def learn_host_keys(cluster: Cluster, virt: Libvirt, doms, wait: int = 0) -> None:
    """A user's own image (image.path): put the running nodes' ssh host keys in known_hosts,
    under their names (HostKeyAlias), read through the guest agent. The agent can answer before
    sshd runs: `wait` seconds for it (doit start waits; doit status does not, and learns a late
    key next time)."""
    doms = [(node, dom) for node, dom in doms if not identity_disk.attached(dom)]
    if not doms:
        return  # known_hosts is written from the identity disks
    known = {}
    path = known_hosts_file(cluster)
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, key = line.partition(" ")
            known[name] = key
    for node, dom in doms:
        try:
            result = virt.run(dom, ["sh", "-c", f"for i in $(seq {wait}); do {_KEY_IS_THIS_NODES} && "
                                    f"break; sleep 1; done; {_KEY_IS_THIS_NODES} && cat {HOST_KEY}"],
                              timeout=wait + 30)
        except (DaliError, libvirt.libvirtError):
            continue  # a busy or stopping node: its key is learnt next time
        if result.exitcode == 0 and result.stdout.strip():
            known[node.name] = " ".join(result.stdout.split()[:2])
    write_if_changed(path, "".join(f"{name} {key}\n" for name, key in sorted(known.items())))
