"""What every workload shares: the run's context, the recorder of operations and violations,
self-checking contents, and aligned buffers for direct I/O.

This package runs inside the guests (Python 3.11 of Debian 12, standard library only: nothing
is installed on a node) and is imported on the host for its names, documentation and judges.
It must therefore never import dali: dali/torture.py ships it to the nodes as one zip file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import struct
import time

BLOCK = 4096
DAX_ALIGN = 2 << 20  # device-dax's alignment: its mappings start and end on one (the host aligns areas)
EXAMPLES = 12  # violations described in full per node; the rest are counted


class Context:
    """One node's part in one run: who it is, what it works on, for how long.

    target: the directory the workload works in (a filesystem) or the device (/dev/pmem0,
    /dev/dax0.0, the shared disk); kind says which: "dir", "block" or "dax". area: for device
    workloads, (offset, size) of the bytes the host saved and lets the run overwrite."""

    def __init__(self, args: dict):
        self.workload = args["workload"]
        self.target = args["target"]
        self.kind = args["kind"]
        self.index = int(args["index"])
        self.nodes = int(args["nodes"])
        self.name = args["name"]
        self.seconds = float(args["seconds"])
        self.seed = int(args["seed"])
        self.run_id = args["run_id"]
        self.params = dict(args.get("params") or {})
        self.area = tuple(args["area"]) if args.get("area") else None
        # The cluster stack of the target's filesystem ("o2cb"; "" when it is none or a device):
        # what cluster-wide means there (o2cb keeps POSIX locks node-local).
        self.stack = args.get("stack", "")
        # When every node begins, on this node's clock: the host measured each node's clock
        # against its own, so the nodes begin together, after their setup, within ~0.1 s.
        self.start_at = args.get("start_at")

    @property
    def workdir(self) -> str:
        """The run's own directory on a filesystem target: never a user's file."""
        return os.path.join(self.target, f".dali-torture-{self.run_id}", self.workload)


class Recorder:
    """Counts operations, their worst latency and the stalls between them, and violations.

    A stall is a gap of a second or more between two completed operations: when a node dies
    or the network splits, the survivors' stalls say how long the filesystem kept them waiting
    and when (seconds from this node's start)."""

    def __init__(self, seconds: float, start_at: float | None = None):
        self.seconds = seconds
        self.start_at = start_at
        self.late = 0.0
        self.begin_now()
        self.ops = 0
        self.bytes = 0
        self.max_latency = 0.0
        self.stalls: list[tuple[float, float]] = []
        self.violations: dict[str, int] = {}
        self.examples: list[str] = []
        self.notes: dict[str, int] = {}
        self.timeline: list[int] = []  # operations completed in each second from the start

    def begin_now(self) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.seconds
        self.last = self.t0

    def begin(self) -> None:
        """After the workload's setup: wait for the common start, then start the clock. Faults
        are timed from it, so setup (a first mkdir on a cluster filesystem can take seconds)
        is never mistaken for a stall."""
        if self.start_at is not None:
            wait = self.start_at - time.time()
            if wait > 0:
                time.sleep(wait)
            self.late = round(max(0.0, -wait), 2)
        self.begin_now()

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    @contextlib.contextmanager
    def op(self, nbytes: int = 0):
        started = time.monotonic()
        yield
        now = time.monotonic()
        self.max_latency = max(self.max_latency, now - started)
        if now - self.last >= 1.0:
            self.stalls.append((round(self.last - self.t0, 2), round(now - self.last, 2)))
        self.last = now
        self.ops += 1
        self.bytes += nbytes
        second = int(now - self.t0)
        if second >= 0:  # an operation of the setup, before begin(), is not on the run's clock
            self.timeline += [0] * (second + 1 - len(self.timeline))
            self.timeline[second] += 1

    def violation(self, kind: str, text: str) -> None:
        self.violations[kind] = self.violations.get(kind, 0) + 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)

    def note(self, kind: str, n: int = 1) -> None:
        """Something worth counting that is not wrong (a seqlock read that raced a writer)."""
        self.notes[kind] = self.notes.get(kind, 0) + n

    def result(self, state: dict) -> dict:
        now = time.monotonic()
        elapsed = now - self.t0
        if now - self.last >= 1.0:  # blocked until the end: no operation completed since
            self.stalls.append((round(self.last - self.t0, 2), round(now - self.last, 2)))
        return {"ops": self.ops, "late": self.late, "bytes": self.bytes, "elapsed": round(elapsed, 3),
                "max_latency": round(self.max_latency, 4),
                "stalls": sorted(self.stalls, key=lambda s: -s[1])[:5],
                "violations": self.violations, "examples": self.examples, "notes": self.notes,
                "timeline": self.timeline, "state": state}


class Verdict:
    """A judge's findings, by node: {node: {kind: count}} and examples, for the report.

    expected: {kind: why} for kinds the workload itself knows to happen where it ran (fcntl
    locks on o2cb, which keeps POSIX locks node-local): reported as such, failing nothing."""

    def __init__(self):
        self.by_node: dict[str, dict[str, int]] = {}
        self.examples: list[str] = []
        self.expected: dict[str, str] = {}

    def add(self, node: str, kind: str, text: str, count: int = 1) -> None:
        if count <= 0:
            return
        kinds = self.by_node.setdefault(node, {})
        kinds[kind] = kinds.get(kind, 0) + count
        if len(self.examples) < 3 * EXAMPLES:
            self.examples.append(f"{node}: {text}")


def wait_for(check, what: str, timeout: float = 60.0):
    """Poll check() until it returns something true (another node is making what we need)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except FileNotFoundError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.05)


# --- contents that check themselves ----------------------------------------------------------

def payload(label: str, size: int) -> bytes:
    """size bytes that only `label` makes: a torn or mixed-up copy never passes for it."""
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def labelled(label: str, size: int) -> bytes:
    """A file's contents: a first line naming it, then its payload (see is_labelled)."""
    head = f"dali {label} {size}\n".encode()
    return head + payload(label, size)


def is_labelled(data: bytes) -> bool:
    """Whether data is exactly what labelled() made for the label its first line names."""
    head, _, rest = data.partition(b"\n")
    parts = head.split(b" ")
    if len(parts) != 3 or parts[0] != b"dali" or not parts[2].isdigit():
        return False
    return rest == payload(parts[1].decode(errors="replace"), int(parts[2]))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- direct I/O ---------------------------------------------------------------------------------

def aligned(size: int) -> mmap.mmap:
    """A page-aligned buffer, as O_DIRECT wants."""
    return mmap.mmap(-1, max(size, BLOCK))


class Device:
    """A shared device read and written at byte offsets, around every cache: O_DIRECT on a block
    device, a MAP_SHARED mapping of device-dax (which has no read or write), both of `area` only."""

    def __init__(self, path: str, kind: str, area: tuple[int, int]):
        self.base, self.size = area
        self.kind = kind
        if kind == "dax":
            self.fd = os.open(path, os.O_RDWR)
            length = -(-self.size // DAX_ALIGN) * DAX_ALIGN  # device-dax maps whole 2 MiB pages
            self.map = mmap.mmap(self.fd, length, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE, offset=self.base)
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_DIRECT)
            self.buf = aligned(0)

    def read(self, offset: int, size: int) -> bytes:
        if self.kind == "dax":
            return bytes(self.map[offset:offset + size])
        if len(self.buf) < size:
            self.buf = aligned(size)
        view = memoryview(self.buf)[:size]
        got = os.preadv(self.fd, [view], self.base + offset)
        if got != size:
            raise OSError(errno.EIO, f"short read: {got} of {size} bytes at {offset}")
        return bytes(view)

    def write(self, offset: int, data: bytes) -> None:
        if self.kind == "dax":
            self.map[offset:offset + len(data)] = data
            return
        if len(self.buf) < len(data):
            self.buf = aligned(len(data))
        self.buf[:len(data)] = data
        got = os.pwritev(self.fd, [memoryview(self.buf)[:len(data)]], self.base + offset)
        if got != len(data):
            raise OSError(errno.EIO, f"short write: {got} of {len(data)} bytes at {offset}")


def u64(data: bytes, at: int = 0) -> int:
    return struct.unpack_from("<Q", data, at)[0]
