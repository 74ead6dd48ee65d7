"""The libvirt adapter's ownership rules, on libvirt's in-memory test driver (fast, no daemon).

The same rules are exercised on the real qemu:///system in test_cluster.py.
"""

import pytest

from tasks import config, domain, network
from tasks.virt import ForeignObject, Libvirt

FOREIGN_DOMAIN = """<domain type="test"><name>{name}</name><memory>65536</memory>
<os><type>hvm</type></os></domain>"""


@pytest.fixture
def virt():
    """The test driver's in-memory hypervisor is shared by the process: leave it as found."""
    v = Libvirt("test:///default", "ivp")
    domains = {d.name() for d in v.conn.listAllDomains()}
    networks = {n.name() for n in v.conn.listAllNetworks()}
    yield v
    for d in v.conn.listAllDomains():
        if d.name() not in domains:
            d.undefine()
    for n in v.conn.listAllNetworks():
        if n.name() not in networks:
            n.undefine()


def test_unknown_names_are_none(virt):
    assert virt.domain("ivpa") is None
    assert virt.network("ivp") is None


def test_a_foreign_domain_is_refused_never_adopted(virt):
    virt.conn.defineXML(FOREIGN_DOMAIN.format(name="ivpa"))
    with pytest.raises(ForeignObject, match="ivpa.*no dali mark"):
        virt.domain("ivpa")
    assert virt.our_domains() == {}


def test_another_clusters_domain_is_refused(virt):
    other = config.load(env={"DALI_TAG": "ivp2"})  # not our tag
    xml = domain.domain_xml(other, other.original_node, "test").replace(
        "<name>ivp2a</name>", "<name>ivpa</name>")
    virt.conn.defineXML(_for_test_driver(xml))
    with pytest.raises(ForeignObject, match="dali cluster 'ivp2'"):
        virt.domain("ivpa")


def test_our_marked_domain_is_found(virt):
    c = config.load(env={})
    virt.conn.defineXML(_for_test_driver(domain.domain_xml(c, c.original_node, "test")))
    virt.conn.defineXML(FOREIGN_DOMAIN.format(name="somebodyelse"))
    assert virt.domain("ivpa").name() == "ivpa"
    assert set(virt.our_domains()) == {"ivpa"}


def test_a_foreign_network_is_refused(virt):
    virt.conn.networkDefineXML("<network><name>ivp</name></network>")
    with pytest.raises(ForeignObject, match="network 'ivp'"):
        virt.network("ivp")


def test_our_network_is_found(virt):
    virt.define_network(network.network_xml(config.load(env={})))
    assert virt.network("ivp").name() == "ivp"


def test_libvirtd_unreachable_is_one_line():
    broken = Libvirt("qemu+unix:///system?socket=/nonexistent", "ivp")
    with pytest.raises(Exception) as e:
        broken.conn
    assert "scripts/setup" in str(e.value) and "\n" not in str(e.value)


def _for_test_driver(xml: str) -> str:
    # The test driver knows no qemu:commandline namespace or kernel paths; keep what it checks.
    import re
    xml = re.sub(r"<qemu:commandline>.*</qemu:commandline>", "", xml, flags=re.S)
    return xml
