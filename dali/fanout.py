"""One thing done on several nodes at once: each node is a guest that spends most of the time
the host waits for it in emulated CPU, so what is done node by node is done side by side. The
one fan-out of dali: start, verify, status, pssh, pput, torture and the OCFS2 set-up use it."""

from __future__ import annotations

import threading

import libvirt

from dali.errors import DaliError, one_line


def each(items, fn, at_once: int | None = None, on_done=None) -> list:
    """fn(node, dom) for every (node, dom) pair of items (any pairs: torture passes (job, node)
    and a domain), at_once of them at a time (default: all at once), the next one started as
    soon as one ends. on_done(node, result), if given, is called as each one ends, one call at
    a time (pssh prints a node's output as soon as it has it). Returns the results in the
    order of items; the errors, one line each, are raised together after all have ended."""
    from concurrent.futures import ThreadPoolExecutor, as_completed  # here: its import (logging) slows every doit

    items = list(items)
    done_lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, at_once or len(items))) as pool:
        futures = [pool.submit(fn, n, d) for n, d in items]
        if on_done is not None:
            which = {f: n for f, (n, _) in zip(futures, items)}
            for f in as_completed(futures):
                if f.exception() is None:
                    with done_lock:
                        on_done(which[f], f.result())
    results, failures = [], []
    for f in futures:
        try:
            results.append(f.result())
        except (DaliError, libvirt.libvirtError) as e:
            failures.append(one_line(e))
    if failures:
        raise DaliError("; ".join(failures))
    return results
