"""One thing done on several nodes at once: each node is a guest that spends most of the time
the host waits for it in emulated CPU, so what is done node by node is done side by side."""

from __future__ import annotations

import libvirt

from dali.errors import DaliError, one_line


def each(doms, fn, at_once: int | None = None) -> list:
    """fn(node, dom) on every node, at_once of them at a time (default: all at once), the next
    one started as soon as one ends; the errors, one line each, are raised together after all
    have ended."""
    from concurrent.futures import ThreadPoolExecutor  # here: its import (logging) slows every doit

    with ThreadPoolExecutor(max_workers=max(1, at_once or len(doms))) as pool:
        futures = [pool.submit(fn, n, d) for n, d in doms]
    results, failures = [], []
    for f in futures:
        try:
            results.append(f.result())
        except (DaliError, libvirt.libvirtError) as e:
            failures.append(one_line(e))
    if failures:
        raise DaliError("; ".join(failures))
    return results
