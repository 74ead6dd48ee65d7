"""Where the cluster's libvirtd is, from its uri (dali/libvirtd.py, dali.cluster.is_remote), and
how ssh reaches its nodes. No libvirtd needed: a remote host's proxy is text, and a socket's
owner is asked of a socket this test listens on."""

from __future__ import annotations

import os
import socket

import pytest

from dali import storage, libvirtd, settings
from dali.cluster import is_remote
from dali.storage.pool import LibvirtPool
from dali.virt import Libvirt


@pytest.mark.parametrize("uri, remote", [
    ("qemu:///system", False),
    ("qemu:///session", False),
    ("test:///default", False),
    ("qemu+ssh://root@lab/system", True),
    ("qemu+tls://lab.example/system", True),
    ("qemu+unix:///system?socket=/run/other/libvirt-sock", True),
    ("qemu+unix:///system", False),
])
def test_a_uri_is_remote_when_it_names_a_host_or_a_daemons_socket(uri, remote):
    assert is_remote(uri) is remote


def remote_cluster(tmp_path, uri, netns=""):
    lines = [f'uri = "{uri}"', "[device]", 'style = "native"']
    if netns:
        lines += ["[remote]", f'netns = "{netns}"']
    (tmp_path / "c.toml").write_text("\n".join(lines) + "\n")
    return settings.load(tmp_path / "c.toml", env={}, repo=tmp_path)


def test_ssh_jumps_through_the_libvirt_host(tmp_path):
    c = remote_cluster(tmp_path, "qemu+ssh://admin@lab.example:2222/system")
    assert libvirtd.ssh_proxy(c) == "ssh -l admin -p 2222 -- lab.example nc %h %p"
    assert libvirtd.route_table(c.uri) is None  # another machine's: not readable from here
    c = remote_cluster(tmp_path, "qemu+ssh://lab/system", netns="dali")
    assert libvirtd.ssh_proxy(c) == "ssh -- lab ip netns exec dali nc %h %p"
    c = remote_cluster(tmp_path, "qemu+ssh://[fe80::1%25eth0]:22/system")
    assert libvirtd.ssh_proxy(c) == "ssh -p 22 -- fe80::1%%eth0 nc %h %p"


def test_the_jump_logs_in_as_libvirt_does(tmp_path):
    """The uri's parameters for libvirt's ssh transports: the jump uses the same key and host
    key policy, or it would ask for what libvirt was told. Not tls's no_verify=, which is about
    certificates."""
    c = remote_cluster(tmp_path, "qemu+ssh://root@lab/system?keyfile=/home/me/.ssh/lab%20key&no_verify=1")
    assert libvirtd.ssh_proxy(c) == ("ssh -i '/home/me/.ssh/lab key' -o StrictHostKeyChecking=no "
                                     "-l root -- lab nc %h %p")
    c = remote_cluster(tmp_path, "qemu+libssh2://lab/system?keyfile=/k/lab&known_hosts_verify=auto")
    assert libvirtd.ssh_proxy(c) == "ssh -i /k/lab -- lab nc %h %p"
    c = remote_cluster(tmp_path, "qemu+ssh://lab/system?no_verify=0")
    assert libvirtd.ssh_proxy(c) == "ssh -- lab nc %h %p"
    c = remote_cluster(tmp_path, "qemu+tls://lab/system?no_verify=1&pkipath=/etc/pki/lab")
    assert libvirtd.ssh_proxy(c) == "ssh -- lab nc %h %p"


def test_a_percent_of_the_uri_reaches_ssh_as_itself(tmp_path):
    """ssh expands %h, %p, %r ... in a ProxyCommand before the shell sees it, quotes or not: a
    '%' of the user's name or the key's path is written %%, or ssh would take `%r` for the
    login name (and refuse `%/`)."""
    c = remote_cluster(tmp_path, "qemu+ssh://50%25r@lab/system?keyfile=/keys/100%25/k%25r")
    assert libvirtd.ssh_proxy(c) == "ssh -i /keys/100%%/k%%r -l 50%%r -- lab nc %h %p"


def test_a_remote_dir_is_taken_as_written(tmp_path):
    """A path on the libvirt host: not resolved against this machine's symlinks."""
    c = remote_cluster(tmp_path, "qemu+ssh://lab/system")
    assert str(c.data_dir) == f"/var/lib/dali/{c.tag}"
    files = storage.of(c, Libvirt(c.uri, c.id))  # (connects only when asked something)
    assert isinstance(files, LibvirtPool)
    assert files.image_dir == c.data_dir  # a pool's volumes are the files of one directory
    assert files.console_log(c.original_node) == c.data_dir / f"{c.original_node.name}-console.log"


def test_the_daemon_behind_a_socket_is_found_by_asking_the_socket(tmp_path):
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        assert libvirtd.local_pid(f"qemu+unix:///system?socket={path}") == os.getpid()
    assert libvirtd.namespace_prefix(os.getpid()) == []  # our own namespace: nothing to enter
    assert libvirtd.local_pid(f"qemu+unix:///system?socket={tmp_path / 'none'}") is None
