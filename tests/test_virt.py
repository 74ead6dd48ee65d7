"""dali's libvirt adapter (dali/virt.py) on libvirt's test driver: what needs no real guest."""

from __future__ import annotations

import time

import pytest

from dali.errors import DaliError
from dali.virt import Libvirt


def test_a_node_that_panics_while_booting_fails_the_wait_at_once(test_driver):
    """doit start waits for a booting node's agent up to timeouts.boot (15 minutes by default);
    a kernel that panicked in its first second ("IO-APIC + timer doesn't work!", seen on a
    loaded host) is reported within seconds instead."""
    dom = test_driver.conn.lookupByName("test")  # the test driver's running domain: no agent
    t0 = time.monotonic()
    with pytest.raises(DaliError, match="test died while booting .panic: IO-APIC"):
        test_driver.wait_for_agent(dom, 900, crashed=lambda: "panic: IO-APIC + timer doesn't work!")
    assert time.monotonic() - t0 < 10


def test_starts_noted_by_nodes_booting_side_by_side_are_all_kept(tmp_path):
    """On a remote host start() notes each node's start in one file; nodes boot in threads of
    their own, and two notes at once lost one (or failed: the second rename found no file)."""
    import threading
    from types import SimpleNamespace
    virt = Libvirt("test:///default", "x")
    virt.starts_file = tmp_path / "starts.json"
    doms = [SimpleNamespace(name=lambda n=n: f"node{n}", ID=lambda n=n: n) for n in range(40)]
    threads = [threading.Thread(target=virt._record_start, args=(d,)) for d in doms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(virt.started_at(d) is not None for d in doms)
