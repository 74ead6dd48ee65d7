"""Which subnet a cluster's network gets: configured, kept, or picked free (test driver)."""

import ipaddress

import pytest

from dali import network, settings
from dali.errors import DaliError
from dali.network import pick_subnet
from dali.virt import Libvirt


def net(text):
    return ipaddress.IPv4Network(text)


def test_the_seeds_subnet_first_then_the_first_free_one():
    assert pick_subnet(24, []) == net("192.168.7.0/24")
    assert pick_subnet(24, [net("192.168.7.0/24")]) == net("192.168.100.0/24")
    assert pick_subnet(24, [net("192.168.7.0/24"), net("192.168.100.0/22")]) == net("192.168.104.0/24")
    assert pick_subnet(28, [net("192.168.7.0/24")]) == net("192.168.100.0/28")


def test_host_routes_are_read(tmp_path):
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                     "eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
                     "eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert network.host_routes(table) == [net("192.168.2.0/24")]


def test_a_second_cluster_gets_a_subnet_of_its_own(test_driver, config):
    first = network.plan(config, test_driver)
    test_driver.define_network(network.network_xml(config, first))
    other = settings.load(env={"DALI_TAG": "zt", "DALI_DIR": "/srv/zt"})
    second = network.plan(other, Libvirt("test:///default", other.id))
    assert ipaddress.IPv4Address(second.address) not in ipaddress.IPv4Network(f"{first.address}/24", strict=False)


def test_an_existing_network_keeps_its_subnet(test_driver, config):
    kept = network.Addresses("192.168.150.254", 24, "192.168.150.1", "192.168.150.253")
    test_driver.define_network(network.network_xml(config, kept))
    assert network.plan(config, test_driver) == kept


def test_a_configured_subnet_is_used_as_configured(test_driver, config):
    configured = config._replace(network=config.network._replace(address="10.9.8.254", prefix=24))
    assert network.plan(configured, test_driver) == network.Addresses("10.9.8.254", 24, "10.9.8.1", "10.9.8.253")


def test_each_node_gets_the_first_free_address_and_keeps_it(config):
    plan = network.Addresses("192.168.7.254", 24, "192.168.7.1", "192.168.7.253")
    table = network.address_table(config, plan, [])
    assert [(h.name, h.ip) for h in table] == [("ivpa", "192.168.7.1"), ("ivpb", "192.168.7.2"),
                                               ("ivpc", "192.168.7.3")]
    # A clone added later, and one removed: nobody else moves.
    more = settings.load(env={"DALI_CLONES": "c d"})
    again = network.address_table(more, plan, table)
    assert {h.name: h.ip for h in again} == {"ivpa": "192.168.7.1", "ivpb": "192.168.7.2",
                                             "ivpc": "192.168.7.3", "ivpd": "192.168.7.4"}


def test_a_full_range_is_one_line(config):
    tiny = network.Addresses("10.0.0.6", 29, "10.0.0.1", "10.0.0.2")
    with pytest.raises(DaliError, match="no free address left .* for ivpc"):
        network.address_table(config, tiny, [])


def test_the_network_carries_every_nodes_name_and_address(test_driver, config):
    # network.ensure writes the default cluster's state/ivp/network.xml in the checkout: a
    # user's file, if they have that cluster. Whatever was there before is put back.
    path = config.network_xml
    made = [p for p in (path.parent, path) if not p.exists()]
    before = path.read_bytes() if path.exists() else None
    try:
        network.ensure(config, test_driver)
        addresses = network.addresses_of(config, test_driver)
        assert sorted(addresses) == ["ivpa", "ivpb", "ivpc"] and len(set(addresses.values())) == 3
        assert network.is_live(config, test_driver)
    finally:
        if before is not None:
            path.write_bytes(before)
        for p in reversed(made):
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)


def test_a_configured_subnet_that_is_taken_is_refused_before_anything_is_defined(test_driver, config):
    """An explicit network.address in another network's subnet: one line, and no network
    defined (libvirt would define it, then refuse to start it, and leave it behind)."""
    other = network.Addresses("10.9.8.254", 24, "10.9.8.1", "10.9.8.253")
    elsewhere = settings.load(env={"DALI_TAG": "zt", "DALI_DIR": "/srv/zt"})
    test_driver.define_network(network.network_xml(elsewhere, other))
    clash = config._replace(network=config.network._replace(address="10.9.8.100", prefix=25))
    before = {n.name() for n in test_driver.conn.listAllNetworks()}
    with pytest.raises(DaliError, match=r"10\.9\.8\.0/25 overlaps 10\.9\.8\.0/24 of libvirt network zt"):
        network.plan(clash, test_driver)
    assert {n.name() for n in test_driver.conn.listAllNetworks()} == before


def test_a_network_that_fails_to_start_is_undefined_again(test_driver, config_in, monkeypatch):
    """libvirt defines a network it then cannot start (a subnet another interface took since):
    the refused run leaves no network behind, nor its file in state/."""
    cfg = config_in._replace(network=config_in.network._replace(address="10.77.0.254", prefix=24))
    cfg.state_dir.mkdir(parents=True)

    def refuse(net):
        raise DaliError(f"starting network {net.name()} failed: Network is already in use")
    monkeypatch.setattr(test_driver, "start_network", refuse)
    with pytest.raises(DaliError, match="already in use"):
        network.ensure(cfg, test_driver)
    assert cfg.network.name not in [n.name() for n in test_driver.conn.listAllNetworks()]
    assert not cfg.network_xml.exists()
