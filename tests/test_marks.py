"""Ownership: what dali refuses, finds or deletes by its marks. libvirt's in-memory test driver
keeps the libvirt half fast; tests/test_cluster.py holds the same rules on qemu:///system."""

import os
import re
import shutil

import pytest

from dali import domain, marks, network, settings
from dali.steps import Step, uptodate
from dali.network import Addresses
from dali.storage.local import LocalDir
from dali.virt import ForeignObject, Libvirt
from support.files import local_files

FOREIGN_DOMAIN = """<domain type="test"><name>{name}</name><memory>65536</memory>
<os><type>hvm</type></os></domain>"""
ADDRESSES = Addresses("192.168.7.254", 24, "192.168.7.1", "192.168.7.253")


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
    xml = domain.domain_xml(other, local_files(other), other.original_node, "test").replace(
        "<name>ivp2a</name>", "<name>ivpa</name>")
    test_driver.conn.defineXML(for_test_driver(xml))
    with pytest.raises(ForeignObject, match="dali cluster 'ivp2'"):
        test_driver.domain("ivpa")


def test_the_same_tag_from_another_dir_is_another_cluster(test_driver, config):
    """Two DALI_DIRs (or two checkouts) with one tag: the second is refused, never adopted."""
    twin = settings.load(env={"DALI_DIR": "/srv/elsewhere"})
    assert twin.tag == config.tag and twin.id != config.id
    test_driver.conn.defineXML(for_test_driver(domain.domain_xml(twin, local_files(twin), twin.original_node, "test")))
    with pytest.raises(ForeignObject, match="dali cluster 'ivp' of checkout .* with dir /srv/elsewhere"):
        test_driver.domain("ivpa")
    assert test_driver.our_domains() == {}
    assert set(Libvirt("test:///default", twin.id).our_domains()) == {"ivpa"}


def test_our_marked_domain_is_found(test_driver, config):
    test_driver.conn.defineXML(for_test_driver(domain.domain_xml(config, local_files(config), config.original_node, "test")))
    test_driver.conn.defineXML(FOREIGN_DOMAIN.format(name="somebodyelse"))
    assert test_driver.domain("ivpa").name() == "ivpa"
    assert set(test_driver.our_domains()) == {"ivpa"}


def test_a_domain_using_a_file_is_found(test_driver, config):
    test_driver.conn.defineXML(for_test_driver(domain.domain_xml(config, local_files(config), config.original_node, "test")))
    assert test_driver.domains_using(config.disk(config.original_node)) == ["ivpa"]
    assert test_driver.domains_using(config.disk(config.clone_nodes[0])) == []


def test_a_foreign_network_is_refused(test_driver):
    test_driver.conn.networkDefineXML("<network><name>ivp</name></network>")
    with pytest.raises(ForeignObject, match="network 'ivp'"):
        test_driver.network("ivp")


def test_our_network_is_found(test_driver, config):
    test_driver.define_network(network.network_xml(config, ADDRESSES))
    assert test_driver.network("ivp").name() == "ivp"


def test_libvirtd_unreachable_is_one_line():
    broken = Libvirt("qemu+unix:///system?socket=/nonexistent", "x")
    with pytest.raises(Exception) as e:
        broken.conn
    assert "scripts/setup" in str(e.value) and "\n" not in str(e.value)


# --- files ------------------------------------------------------------------------------------

@pytest.fixture
def ours(config_in):
    config_in.data_dir.mkdir(parents=True)
    path = config_in.data_dir / "ivpb.qcow2"
    path.write_bytes(b"a node's work")
    marks.mark(path, config_in)
    return path


def test_a_file_is_ours_only_with_our_mark(config_in, ours, capfd):
    virt = Libvirt("test:///default", config_in.id)
    foreign = config_in.data_dir / "foreign"
    foreign.write_bytes(b"y")
    assert marks.is_ours(ours, config_in) and not marks.is_ours(foreign, config_in)
    assert not marks.is_ours(ours, settings.load(env={"DALI_TAG": "other"}))
    LocalDir(config_in, virt).remove(ours, dryrun=True)
    assert ours.exists() and "would remove" in capfd.readouterr().err
    LocalDir(config_in, virt).remove(ours)
    LocalDir(config_in, virt).remove(foreign)
    assert not ours.exists() and foreign.exists()
    assert "did not create" in capfd.readouterr().err


def test_a_copy_is_not_ours(config_in, ours):
    copy = ours.with_name("ivpb-keep.qcow2")
    shutil.copy2(ours, copy)  # like cp -a: the xattr travels with it
    os.setxattr(copy, marks.XATTR, os.getxattr(ours, marks.XATTR))
    assert not marks.is_ours(copy, config_in)
    LocalDir(config_in, Libvirt("test:///default", config_in.id)).remove(copy)
    assert copy.exists()


def test_a_renamed_file_is_not_ours(config_in, ours):
    kept = ours.with_name("FAM.keep")
    ours.rename(kept)  # mv FAM FAM.keep, as the FAM-size error suggests
    assert not marks.is_ours(kept, config_in)
    copy_back = ours
    shutil.copy2(kept, copy_back)  # and a copy put back at our name is not ours either
    os.setxattr(copy_back, marks.XATTR, os.getxattr(kept, marks.XATTR))
    assert not marks.is_ours(copy_back, config_in)


def test_a_symlink_is_never_ours(config_in, ours):
    link = ours.with_name("ivpc.qcow2")
    link.symlink_to(ours)
    assert not marks.is_ours(link, config_in)


def test_a_directory_the_user_made_stays(config_in, capfd):
    config_in.data_dir.mkdir(parents=True)  # the user's, before the first run
    marks.make_dir(config_in.data_dir, config_in)
    marks.remove_dir_if_ours(config_in.data_dir, config_in)
    assert config_in.data_dir.is_dir() and "did not create" in capfd.readouterr().err
    made = config_in.data_dir / "image"
    marks.make_dir(made, config_in)
    assert oct(made.stat().st_mode & 0o777) == "0o750"
    marks.remove_dir_if_ours(made, config_in)
    assert not made.exists()


def test_checks_share_one_listing_until_an_action_starts(test_driver, config):
    """Uptodate checks ask libvirt once per run (a no-op doit at 16 nodes asked 48 times);
    an action, and every check after one, sees libvirt as it is now."""
    is_defined = uptodate(lambda: test_driver.domain("ivpa") is not None)
    assert not is_defined()  # the listing of this check: no ivpa
    test_driver.conn.defineXML(for_test_driver(domain.domain_xml(config, local_files(config), config.original_node, "test")))
    assert not is_defined()  # no action started since: the checks' listing stands
    assert test_driver.domain("ivpa") is not None  # outside a check: asked now
    seen = []
    Step("look", lambda: seen.append(is_defined())).execute()
    assert seen == [True]  # an action started: a check lists again
    test_driver.conn.lookupByName("ivpa").undefine()
    Step("look", lambda: seen.append(test_driver.domain("ivpa"))).execute()
    assert seen == [True, None]  # an action's own look-up is never the checks' listing
