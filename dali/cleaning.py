"""What `doit clean` removes, one line per object, and `doit clean -n`, the same list beforehand.

Every clean action reports each object it removes (or, with -n, would remove) through said():
a node, the network, the AppArmor rule, a file, a directory, the state directory. A real clean
prints each as it goes ("removed file /var/lib/dali/ivp/ivpa.qcow2"); -n collects them and
prints them at the end, grouped by kind in the order clean removes them, each once (the last
step of clean, the sweep, meets again files that earlier steps named), and nothing else: doit's
own "executing '...'" lines are left out by Clean below, which `doit clean` runs instead of
doit's (registered as a doit command plugin in pyproject.toml).

What clean leaves in place, and why (a file dali did not make), is said in the same way, after
the list, as "would keep".
"""

from __future__ import annotations

import io
import sys

from doit.cmd_clean import Clean as DoitClean

from dali.reporter import log

KINDS = ("node", "network", "AppArmor rule", "snapshot", "file", "directory", "storage pool", "state directory")

_collected: list[tuple[str, str]] | None = None  # (kind, what) while a clean -n runs
_kept: list[str] = []


def said(kind: str, what: str, dryrun: bool) -> None:
    """Report one object clean removes now (dryrun: would remove)."""
    assert kind in KINDS, kind
    if not dryrun:
        log(f"removed {kind} {what}")
    elif _collected is not None:
        _collected.append((kind, what))
    else:
        log(f"would remove {kind} {what}")


def kept(what: str, why: str, dryrun: bool) -> None:
    """Report an object clean leaves in place, and why."""
    if dryrun and _collected is not None:
        _kept.append(f"would keep {what}: {why}")
    else:
        log(f"left {what} in place: {why}")


def _print_collected() -> None:
    seen = set()
    for kind in KINDS:
        for k, what in _collected:
            if k == kind and (k, what) not in seen:
                seen.add((k, what))
                print(f"would remove {kind} {what}")
    for line in dict.fromkeys(_kept):
        print(line)
    sys.stdout.flush()


class Clean(DoitClean):
    """doit's clean, saying only what dali says (one line per object), and keeping what it
    forgot when a step stops it (dali.steps.CleanStep ends a clean that cannot go on)."""

    def clean_tasks(self, tasks, dryrun, cleanforget):
        global _collected
        if dryrun:
            _collected, _kept[:] = [], []
        cleaned = set()
        try:
            for task in tasks:
                if task.name in cleaned:
                    continue
                cleaned.add(task.name)
                task.clean(io.StringIO(), dryrun)  # doit's "executing '...'" lines, dropped
                if cleanforget and not dryrun:
                    self.dep_manager.remove(task.name)
        finally:
            # Also when a step stops the clean (SystemExit): the forgets made so far are kept.
            self.dep_manager.close()
            if dryrun:
                _print_collected()
                _collected = None
