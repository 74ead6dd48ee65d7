"""The identity disk (dali/identity_disk.py), on the host: what the node unpacks, that the same
facts give the same bytes, that a node keeps its key when its facts change, and that a file
dali did not make is never overwritten. That the node boots with it (its key, address,
resolver, and ssh in with the cluster's key) is test_living.py's."""

from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from dali import identity_disk, image
from dali.errors import DaliError

FACTS = "ADDRESS=192.168.7.2/24\nMAC=52:54:00:00:00:02\nDNS=192.168.7.254\nDOMAIN=ivp\nGATEWAY=\n"
CLUSTER_KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleOnlyNotAKeyOfAnyoneXXXXXXXXXXXXXXXX dali-ivp\n"


@pytest.fixture
def fixed_facts(monkeypatch):
    facts = {"text": FACTS}
    monkeypatch.setattr(identity_disk, "facts", lambda cluster, virt, node: facts["text"])
    return facts


def test_the_archive_holds_a_private_key_its_public_half_and_the_network_facts(tmp_path):
    node = type("N", (), {"name": "ivpb"})()
    key, public = identity_disk.new_key(node)
    data = identity_disk.archive(key, public, FACTS, CLUSTER_KEY)
    assert len(data) % 512 == 0, "a raw disk's size is a whole number of sectors"
    disk = tmp_path / "ivpb.identity"
    disk.write_bytes(data)
    # What the node's dali-identity does with it: tar -xf, then sshd and ssh-keygen accept the key.
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(disk), "-C", str(out)], check=True)
    assert sorted(os.listdir(out)) == ["authorized_keys", "network", "ssh_host_ed25519_key",
                                       "ssh_host_ed25519_key.pub"]
    assert (out / "network").read_text() == FACTS
    assert (out / "authorized_keys").read_bytes() == CLUSTER_KEY
    with tarfile.open(disk) as tar:
        assert tar.getmember("ssh_host_ed25519_key").mode == 0o600
    (out / "ssh_host_ed25519_key").chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(out / "ssh_host_ed25519_key")],
                             capture_output=True, text=True, check=True).stdout.split()[:2]
    assert derived == public.decode().split()[:2] and derived[0] == "ssh-ed25519"
    assert identity_disk.archive(key, public, FACTS, CLUSTER_KEY) == data, "the same facts give the same bytes"


def test_a_node_keeps_its_key_when_its_address_changes(config_in, files_in, fixed_facts):
    image.ensure_ssh_key(config_in)
    node = config_in.nodes[1]
    identity_disk.ensure(config_in, files_in, None, node)
    disk = identity_disk.path(config_in, node)
    first = identity_disk.public_key(config_in, files_in, node)
    assert first.startswith("ssh-ed25519 ")
    assert oct(disk.stat().st_mode & 0o777) == "0o640", "root and qemu's group only"
    assert identity_disk.is_current(config_in, files_in, None, node)

    fixed_facts["text"] = FACTS.replace("192.168.7.2/", "192.168.7.9/")
    assert not identity_disk.is_current(config_in, files_in, None, node)
    identity_disk.ensure(config_in, files_in, None, node)
    assert identity_disk.is_current(config_in, files_in, None, node)
    assert identity_disk.public_key(config_in, files_in, node) == first
    assert b"ADDRESS=192.168.7.9/24" in identity_disk.read(disk)["network"]

    other = config_in.nodes[2]
    identity_disk.ensure(config_in, files_in, None, other)
    assert identity_disk.public_key(config_in, files_in, other) != first, "no two nodes share a key"

    # A new cluster key (state/<tag>/ssh/ deleted, doit made another) reaches every node's disk
    config_in.ssh_key.unlink()
    config_in.ssh_key.with_suffix(".pub").unlink()
    image.ensure_ssh_key(config_in)
    assert not identity_disk.is_current(config_in, files_in, None, node)
    identity_disk.ensure(config_in, files_in, None, node)
    assert identity_disk.read(disk)["authorized_keys"] == config_in.ssh_key.with_suffix(".pub").read_bytes()
    assert identity_disk.public_key(config_in, files_in, node) == first, "the node keeps its host key"


def test_a_file_dali_did_not_make_is_left_alone(config_in, files_in, fixed_facts):
    node = config_in.nodes[0]
    disk = identity_disk.path(config_in, node)
    disk.parent.mkdir(parents=True)
    disk.write_text("the user's")
    with pytest.raises(DaliError, match="dali did not make it"):
        identity_disk.ensure(config_in, files_in, None, node)
    assert disk.read_text() == "the user's"
