"""dali's libvirt adapter (dali/virt.py) on libvirt's test driver: what needs no real guest."""

from __future__ import annotations

import time

import pytest

from dali.errors import DaliError


def test_a_node_that_panics_while_booting_fails_the_wait_at_once(test_driver):
    """doit start waits for a booting node's agent up to timeouts.boot (15 minutes by default);
    a kernel that panicked in its first second ("IO-APIC + timer doesn't work!", seen on a
    loaded host) is reported within seconds instead."""
    dom = test_driver.conn.lookupByName("test")  # the test driver's running domain: no agent
    t0 = time.monotonic()
    with pytest.raises(DaliError, match="test died while booting .panic: IO-APIC"):
        test_driver.wait_for_agent(dom, 900, crashed=lambda: "panic: IO-APIC + timer doesn't work!")
    assert time.monotonic() - t0 < 10
