"""The running cluster: start every node at once and wait for each guest agent (one progress
line per node); power them all off gracefully."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.virt import Libvirt


def defined(cluster: Cluster, virt: Libvirt) -> list:
    doms = [(n, virt.domain(n.name)) for n in cluster.nodes]
    missing = [n.name for n, d in doms if d is None]
    if missing:
        raise DaliError(f"{', '.join(missing)} not defined: run doit clone first")
    return doms


def each(doms, fn) -> list:
    """fn(node, dom) on every node at once; the first error is raised after all have ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(doms))) as pool:
        futures = [pool.submit(fn, n, d) for n, d in doms]
    results, failures = [], []
    for f in futures:
        try:
            results.append(f.result())
        except DaliError as e:
            failures.append(str(e))
    if failures:
        raise DaliError("; ".join(failures))
    return results


def start(cluster: Cluster, virt: Libvirt) -> None:
    doms = defined(cluster, virt)
    for _, dom in doms:
        virt.start(dom)
    log(f"started {', '.join(d.name() for _, d in doms)}; waiting for their guest agents")

    def wait(node, dom):
        took = virt.wait_for_agent(dom, cluster.boot_timeout, log)
        log(f"{node.name}: guest agent answered after {took:.0f} s")

    each(doms, wait)


def shutdown(cluster: Cluster, virt: Libvirt) -> None:
    doms = [(n, d) for n, d in ((n, virt.domain(n.name)) for n in cluster.nodes) if d]
    each(doms, lambda node, dom: log(f"{node.name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}"))
