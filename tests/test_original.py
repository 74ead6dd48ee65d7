"""When original:shutdown has work to do (dali/original.py nothing_to_shut_down), on libvirt's test
driver: the run of the original that original:boot started is shut down, no other. The booted
cluster tests hold the same rule on qemu:///system: test_cluster.py's original ends off, and a
`doit` with the original started by `doit start` runs nothing (test_a_removed_clone_...);
test_kill.py kills a cold run at every step around it."""

from dali import domain, original
from support.files import local_files
from test_marks import for_test_driver


def test_only_the_run_boot_started_is_shut_down(test_driver, config, monkeypatch):
    monkeypatch.setattr(type(test_driver), "run_of", lambda virt, dom: f"run {dom.ID()}")
    dom = test_driver.conn.defineXML(for_test_driver(domain.domain_xml(config, local_files(config), config.original_node, "test")))
    assert original.nothing_to_shut_down(config, test_driver, None), "off, never booted"
    dom.create()
    booted = f"run {dom.ID()}"
    # A run killed after ndctl (reconfigure never recorded its result), or before the power-off
    # ended: still the run boot started, so the next doit shuts it down.
    assert not original.nothing_to_shut_down(config, test_driver, booted)
    dom.destroy()
    assert original.nothing_to_shut_down(config, test_driver, booted), "off: nothing to do"
    dom.create()  # started again, as `doit start` or `virsh start` do: the user's run
    assert original.nothing_to_shut_down(config, test_driver, booted)
    assert original.nothing_to_shut_down(config, test_driver, None), "a FAM prepared by hand: boot never ran"
    dom.destroy()


def test_a_run_is_told_from_the_next(test_driver, config):
    """run_of, here: without a qemu process of that name (the test driver's), no run to name."""
    dom = test_driver.conn.lookupByName("test")
    assert test_driver.run_of(dom) is None
