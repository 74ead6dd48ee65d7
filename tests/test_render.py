"""The rendered XML: parsed, the seed's stanzas present, valid against libvirt's schemas."""

import subprocess
import xml.etree.ElementTree as ET

import pytest

from dali import domain, network, settings
from dali.marks import mark_of
from dali.network import Addresses
from support.files import local_files

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


HOSTILE = "/srv/x'/><source file='/etc/shadow'/></disk><disk><p a=\"&amp;</path><permissions><mode>0777"


def test_paths_are_escaped(config):
    """settings refuse ' < > & " in every path (test_settings.py); were one to get through, the
    XML still holds it as text: one element with that very path, and nothing more."""
    c = config._replace(data_dir=__import__("pathlib").Path(HOSTILE))
    root = ET.fromstring(domain.domain_xml(c, local_files(c), c.original_node, "qemu"))  # still parses
    sources = [s.get("file") for s in root.iterfind("devices/disk/source")]
    assert f"{HOSTILE}/ivpa.qcow2" in sources and "/etc/shadow" not in sources


def test_every_piece_of_libvirt_xml_goes_through_the_one_escaping_path():
    """No module builds libvirt XML, or report.html's HTML, as text (an f-string that opens an
    element): each piece is a template of templates/, rendered with autoescape (dali/render.py),
    or an ElementTree."""
    import ast
    from dali.cluster import REPO
    built_as_text = []
    for path in sorted((REPO / "dali").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            head = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else None
            text = head.value.lstrip() if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
            if text.startswith("<") and text[1:2].isalpha():
                built_as_text.append(f"{path.name}:{node.lineno}")
    assert built_as_text == []


@pytest.mark.parametrize("template, values, where", [
    ("pool.xml.j2", {"name": "p", "path": HOSTILE}, "target/path"),
    ("volume.xml.j2", {"name": "v", "capacity": 1, "allocation": 0, "format": "qcow2", "mode": "0600",
                       "backing": HOSTILE}, "backingStore/path"),
    ("shared-disk.xml.j2", {"path": HOSTILE, "target": "vdz", "serial": "s"}, "source[@file]"),
    ("dhcp-host.xml.j2", {"host": network.Host("52:54:00:00:00:01", HOSTILE, "10.0.0.2")}, "."),
    ("accel-probe.xml.j2", {"domain_type": "kvm", "name": "p", "mark_ns": "urn:x", "mark": {"dir": HOSTILE},
                            "kernel": HOSTILE}, "os/kernel"),
])
def test_hostile_text_stays_text_in_every_template(template, values, where):
    """The same elements as with a plain path (nothing added, nothing closed early), and the
    hostile path whole where the plain one was."""
    from dali.render import render

    def with_path(path):
        swap = lambda v: path if v == HOSTILE else v._replace(name=path) if isinstance(v, network.Host) else v
        return ET.fromstring(render(template, **{k: ({kk: swap(vv) for kk, vv in v.items()} if isinstance(v, dict)
                                                     else swap(v)) for k, v in values.items()}))
    plain, hostile = with_path("/srv/plain"), with_path(HOSTILE)
    assert [e.tag for e in hostile.iter()] == [e.tag for e in plain.iter()]
    found = hostile.find(where)
    assert HOSTILE in (found.text or "", *found.attrib.values())


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
