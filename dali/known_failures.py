"""Known failures: the violations a `doit torture` run expects, and why, read from a baseline
file the user keeps beside the cluster's config (setting torture.known_failures; the checkout
ships known-failures.toml). kdevops keeps expunge lists per kernel and filesystem for the same
reason: a bench that is red on every healthy cluster teaches its users to ignore red.

    [[failure]]
    workload = "append"                 # a workload's name (or your --script's file name)
    kinds = ["lost", "duplicated"]      # the violation kinds it explains; none: every kind
    fs = ["ocfs2"]                      # the target's filesystem (findmnt); none: any
    stacks = ["o2cb"]                   # the cluster stack (/sys/fs/ocfs2/cluster_stack); none: any
    kernels = ["6.1.*"]                 # `uname -r` patterns (fnmatch); every node must match one
    reason = "what it is and where it is written up"
    sometimes = false                   # true: it does not happen on every run (its absence says
                                        # nothing); false: a run without it says "fixed?"

A run whose only violations are explained here exits 0 and lists them apart; any other
violation, a node that failed, a console panic fails it. The file is data: TOML read with
tomllib, every key checked, every text printable; nothing in it runs or reaches a shell.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import NamedTuple

from dali.errors import DaliError

KEYS = ("workload", "kinds", "fs", "stacks", "kernels", "reason", "sometimes")


class Known(NamedTuple):
    workload: str
    kinds: tuple[str, ...]  # empty: every kind
    fs: tuple[str, ...]
    stacks: tuple[str, ...]
    kernels: tuple[str, ...]
    reason: str
    sometimes: bool

    def explains(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


class Where(NamedTuple):
    """What a run ran on, as the known failures are chosen by."""
    fs: str  # the target's filesystem type, "" on a device
    stack: str  # "o2cb", or ""
    kernels: tuple[str, ...]  # every node's release


def load(path: Path | None) -> list[Known]:
    """The baseline's entries; [] without one. A file that cannot be read, is not TOML, or has
    an entry that is not as above is one line naming the file, the entry and the fix."""
    if path is None:
        return []
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DaliError(f"torture.known_failures = {str(path)!r}: {e.strerror if isinstance(e, OSError) else e}: "
                        "point the setting at a readable file, or remove it") from None
    except tomllib.TOMLDecodeError as e:
        raise DaliError(f"{path}: not TOML: {e}") from None
    extra = sorted(set(data) - {"failure"})
    if extra:
        raise DaliError(f"{path}: unknown table {extra[0]!r}: the file holds [[failure]] entries only")
    entries = data.get("failure", [])
    if not isinstance(entries, list):
        raise DaliError(f"{path}: failure must be an array of tables: write each as [[failure]]")
    return [_entry(path, n, e) for n, e in enumerate(entries, 1)]


def _entry(path: Path, n: int, e: dict) -> Known:
    where = f"{path}: failure {n}"
    unknown = sorted(set(e) - set(KEYS))
    if unknown:
        raise DaliError(f"{where}: unknown key {unknown[0]!r}: one of {', '.join(KEYS)}")
    for key in ("workload", "reason"):
        if not isinstance(e.get(key), str) or not e[key].strip():
            raise DaliError(f"{where}: {key} is missing: give it as {key} = \"...\"")
    texts = {}
    for key in ("kinds", "fs", "stacks", "kernels"):
        value = e.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            raise DaliError(f"{where}: {key} must be a list of names in quotes, e.g. {key} = [\"...\"]")
        texts[key] = tuple(value)
    sometimes = e.get("sometimes", False)
    if not isinstance(sometimes, bool):
        raise DaliError(f"{where}: sometimes is true or false")
    for text in (e["workload"], e["reason"], *(x for v in texts.values() for x in v)):
        if not text.isprintable():
            raise DaliError(f"{where}: {text!r} holds a control character: plain text only")
    return Known(e["workload"], texts["kinds"], texts["fs"], texts["stacks"], texts["kernels"],
                 e["reason"].strip(), sometimes)


def applying(entries: list[Known], workload: str, where: Where) -> list[Known]:
    """The entries for this workload that hold where it ran."""
    return [k for k in entries if k.workload == workload
            and (not k.fs or where.fs in k.fs)
            and (not k.stacks or where.stack in k.stacks)
            and (not k.kernels or all(any(fnmatch.fnmatchcase(r, p) for p in k.kernels)
                                      for r in where.kernels))]


class Sorted(NamedTuple):
    """A workload's violations sorted by what explains them."""
    new: dict[str, int]  # kind: count; nothing explains them: they fail the run
    expected: dict[str, tuple[int, str]]  # kind: (count, why), from the baseline or the workload
    fixed: list[Known]  # entries that expected a failure that did not happen


def sort(kinds: dict[str, int], own: dict[str, str], known: list[Known]) -> Sorted:
    """kinds: the run's violations of one workload; own: the kinds the workload itself knows
    to happen where it ran ({kind: why}); known: the baseline's entries that apply."""
    new, expected = {}, {}
    for kind, count in kinds.items():
        why = own.get(kind) or next((k.reason for k in known if k.explains(kind)), None)
        if why is None:
            new[kind] = count
        else:
            expected[kind] = (count, why)
    fixed = [k for k in known if not k.sometimes and not any(k.explains(kind) for kind in kinds)]
    return Sorted(new, expected, fixed)
