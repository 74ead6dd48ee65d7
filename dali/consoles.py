"""The nodes' serial consoles as evidence: what each printed during a window of time, and the
kernel's own words for a crash in it.

libvirt's virtlogd writes every node's serial console to the file the cluster's Storage names
(dali/storage/: /var/log/libvirt/qemu/<node>-console.log here, <dir>/<node>-console.log in the
pool of a remote host, read back as a volume), anew each time the node's qemu starts. A window
is the byte offset at its start; when the file is shorter at the end (qemu restarted) the
window is the whole file.

The patterns are the ones kdevops' fstests watchdog and the kernel's own test bots look for:
panics, oopses, BUG and WARNING splats, soft and hard lockups, hung tasks, and OCFS2's fencing
(the node restarts itself when it loses its cluster). Each report is counted once: a panic
prints many lines, and a hung task repeats every two minutes.
"""

from __future__ import annotations

import re

from dali.storage import Storage

PATTERNS = [  # kdevops' CRASH_PATTERNS (scripts/workflows/lib/crash.py), at the line's start
    ("panic", re.compile(r"Kernel panic - not syncing.*")),
    ("oops", re.compile(r"(?:Oops|general protection fault|Unable to handle kernel|divide error|"
                        r"kernel stack overflow)[: ].*")),
    ("BUG", re.compile(r"(?:kernel )?BUG(?::| at) .*")),
    ("soft lockup", re.compile(r"watchdog: BUG: soft lockup.*|soft lockup - CPU#.*")),
    ("hard lockup", re.compile(r"Watchdog detected hard LOCKUP.*|NMI watchdog: .*hard LOCKUP.*")),
    ("hung task", re.compile(r"INFO: task \S+ blocked for more than \d+ seconds.*|hung_task: blocked tasks.*")),
    ("RCU stall", re.compile(r"rcu: INFO: rcu_(?:sched|preempt) (?:self-)?detected stalls?.*|"
                             r"rcu: .*detected stall on CPU.*")),
    ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+ at .*|UBSAN: .*")),
    ("fenced", re.compile(r"\*\*\* ocfs2 is very sorry to be fencing this system.*")),
]
# What makes a node unusable until it restarts, as opposed to a warning it survives.
FATAL = {"panic", "oops", "BUG", "soft lockup", "hard lockup", "fenced"}
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")


def mark(files: Storage, name: str) -> int:
    """Where the node's console log ends now: the start of a window."""
    return files.size(files.console_log(name)) or 0


def since(files: Storage, name: str, offset: int) -> bytes:
    """What the node's console printed since `offset` (the whole log if qemu started anew)."""
    log = files.console_log(name)
    size = files.size(log) or 0
    start = offset if size >= offset else 0
    return files.read(log, start, size - start) if size > start else b""


def findings(text: bytes | str) -> list[tuple[str, str]]:
    """(kind, the kernel's line) for each report in the text, each distinct one once, in order."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    found, seen = [], set()
    for raw in text.splitlines():
        line = _TIMESTAMP.sub("", raw.replace("\r", "")).strip()
        for kind, pattern in PATTERNS:
            m = pattern.match(line)  # the kernel starts its lines: not a shell's echo of them
            if m:
                # A hung task's report names its seconds; the same task once is enough.
                key = (kind, re.sub(r"\d+ seconds", "N seconds", m.group(0)))
                if key not in seen:
                    seen.add(key)
                    found.append((kind, m.group(0)))
                break
    return found


def fatal(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [f for f in found if f[0] in FATAL]
