"""The rendered XML: parsed, the seed's stanzas present, valid against libvirt's schemas."""

import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import local_files
from dali import domain, network, settings
from dali.marks import mark_of
from dali.network import Addresses

SEED_ADDRESSES = Addresses("192.168.7.254", 24, "192.168.7.1", "192.168.7.20")

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def test_domain_has_the_seeds_stanzas(config):
    node = config.original_node
    text = domain.domain_xml(config, local_files(config), node, "qemu")
    root = ET.fromstring(text)
    assert "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'".replace("'", '"') in text
    assert root.get("type") == "qemu"  # TCG; the seed's 'kvm' hangs on hosts like CI
    max_mem = root.find("maxMemory")
    assert (max_mem.get("slots"), max_mem.get("unit"), max_mem.text) == ("2", "KiB", "2097152")
    assert root.find("memory").text == "1048576"
    cell = root.find("cpu/numa/cell")
    assert (cell.get("id"), cell.get("cpus"), cell.get("memory"), cell.get("unit")) == \
        ("0", "0", "1048576", "KiB")
    args = [a.get("value") for a in root.find(f"{QEMU_NS}commandline")]
    assert args == ["-M", "nvdimm=on", "-object",
                    "memory-backend-file,mem-path=/var/lib/dali/ivp/FAM,size=1G,id=FAM,share=on",
                    "-device", "nvdimm,memdev=FAM"]


def test_domain_devices_and_identity(config):
    node = config.clone_nodes[0]
    root = ET.fromstring(domain.domain_xml(config, local_files(config), node, "qemu"))
    assert root.find("name").text == "ivpb" and root.find("uuid").text == node.uuid
    assert root.find("devices/disk/source").get("file") == "/var/lib/dali/ivp/ivpb.qcow2"
    assert root.find("devices/interface/mac").get("address") == node.mac
    assert root.find("devices/interface/source").get("network") == "ivp"
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert root.find("devices/serial") is not None
    cmdline = root.find("os/cmdline").text
    assert "systemd.hostname=ivpb" in cmdline and f"systemd.machine_id={node.machine_id}" in cmdline
    assert root.find("os/kernel").text == "/var/lib/dali/ivp/image/vmlinuz"
    mark = mark_of(ET.tostring(root).decode())
    assert mark["tag"] == "ivp" and mark["id"] == config.id and mark["dir"] == "/var/lib/dali/ivp"


def test_own_image_boots_from_disk(tmp_path):
    own = tmp_path / "mine.qcow2"
    own.write_bytes(b"")
    (tmp_path / "c.toml").write_text(f'[image]\npath = "{own}"\n')
    c = settings.load(tmp_path / "c.toml", env={})
    root = ET.fromstring(domain.domain_xml(c, local_files(c), c.original_node, "qemu"))
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"


def test_paths_are_escaped(tmp_path):
    c = settings.load(env={"DALI_DIR": str(tmp_path / "a&b<c")})
    root = ET.fromstring(domain.domain_xml(c, local_files(c), c.original_node, "qemu"))  # still parses
    assert "a&b<c" in root.find("devices/disk/source").get("file")


def test_fam_size_spelling():
    assert domain.fam_size_text(1 << 30) == "1G"
    assert domain.fam_size_text(512 << 20) == "512M"


def test_network_xml(config):
    root = ET.fromstring(network.network_xml(config, SEED_ADDRESSES))
    assert root.find("name").text == "ivp" and root.find("forward").get("mode") == "nat"
    assert root.find("ip").get("address") == "192.168.7.254"
    assert root.find("ip/dhcp/range").get("start") == "192.168.7.1"
    assert mark_of(network.network_xml(config, SEED_ADDRESSES))["id"] == config.id
    isolated = config._replace(network=config.network._replace(forward="none"))
    assert ET.fromstring(network.network_xml(isolated, SEED_ADDRESSES)).find("forward") is None


@pytest.mark.parametrize("kind", ["domain", "network"])
def test_valid_against_libvirt_schema(config, tmp_path, kind):
    text = (domain.domain_xml(config, local_files(config), config.original_node, "qemu") if kind == "domain"
            else network.network_xml(config, SEED_ADDRESSES))
    f = tmp_path / f"{kind}.xml"
    f.write_text(text)
    run = subprocess.run(["virt-xml-validate", str(f), kind], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
