"""Ownership: libvirt objects and files dali refuses or finds by its mark. libvirt's in-memory
test driver keeps these fast; tests/test_cluster.py holds the same rules on qemu:///system."""

import re

import pytest

from dali import domain, marks, network, settings
from dali.virt import ForeignObject, Libvirt

FOREIGN_DOMAIN = """<domain type="test"><name>{name}</name><memory>65536</memory>
<os><type>hvm</type></os></domain>"""


def for_test_driver(xml: str) -> str:
    # The test driver rejects the qemu:commandline namespace; everything else it checks stays.
    return re.sub(r"<qemu:commandline>.*</qemu:commandline>", "", xml, flags=re.S)


def test_unknown_names_are_none(test_driver):
    assert test_driver.domain("ivpa") is None
    assert test_driver.network("ivp") is None


def test_a_foreign_domain_is_refused_never_adopted(test_driver):
    test_driver.conn.defineXML(FOREIGN_DOMAIN.format(name="ivpa"))
    with pytest.raises(ForeignObject, match="ivpa.*no dali mark"):
        test_driver.domain("ivpa")
    assert test_driver.our_domains() == {}


def test_another_clusters_domain_is_refused(test_driver):
    other = settings.load(env={"DALI_TAG": "ivp2"})  # not our tag
    xml = domain.domain_xml(other, other.original_node, "test").replace(
        "<name>ivp2a</name>", "<name>ivpa</name>")
    test_driver.conn.defineXML(for_test_driver(xml))
    with pytest.raises(ForeignObject, match="dali cluster 'ivp2'"):
        test_driver.domain("ivpa")


def test_our_marked_domain_is_found(test_driver, config):
    test_driver.conn.defineXML(for_test_driver(domain.domain_xml(config, config.original_node, "test")))
    test_driver.conn.defineXML(FOREIGN_DOMAIN.format(name="somebodyelse"))
    assert test_driver.domain("ivpa").name() == "ivpa"
    assert set(test_driver.our_domains()) == {"ivpa"}


def test_a_foreign_network_is_refused(test_driver):
    test_driver.conn.networkDefineXML("<network><name>ivp</name></network>")
    with pytest.raises(ForeignObject, match="network 'ivp'"):
        test_driver.network("ivp")


def test_our_network_is_found(test_driver, config):
    test_driver.define_network(network.network_xml(config))
    assert test_driver.network("ivp").name() == "ivp"


def test_libvirtd_unreachable_is_one_line():
    broken = Libvirt("qemu+unix:///system?socket=/nonexistent", "ivp")
    with pytest.raises(Exception) as e:
        broken.conn
    assert "scripts/setup" in str(e.value) and "\n" not in str(e.value)


def test_a_file_is_ours_only_with_our_mark(tmp_path, capfd):
    ours, foreign = tmp_path / "ours", tmp_path / "foreign"
    ours.write_bytes(b"x")
    foreign.write_bytes(b"y")
    marks.mark(ours, "ivp")
    assert marks.is_ours(ours, "ivp") and not marks.is_ours(ours, "other")
    marks.remove_if_ours(ours, "ivp", print, dryrun=True)
    assert ours.exists() and "would remove" in capfd.readouterr().out
    marks.remove_if_ours(ours, "ivp", print)
    marks.remove_if_ours(foreign, "ivp", print)
    assert not ours.exists() and foreign.exists()
    assert "did not create" in capfd.readouterr().out
