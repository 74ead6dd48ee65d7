"""tests/coherence/famlines.c on the nodes of a cluster under test: built on the host (static,
-no-pie, so the checker names its functions), put on every node, and the cases of
non-coherent memory played between node a (the writer) and node b (the reader). Used with
checking off (test_device_modes.py: the emulation hides every case) and on
(test_coherence.py: the checker finds each)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dali import guest

ON_NODE = "/usr/local/bin/famlines"
SOURCE = Path(__file__).resolve().parent.parent / "coherence" / "famlines.c"

# Each case its own line of /dev/dax0.0, so that one never sees another's state.
CORRECT, NO_FLUSH, NO_INVALIDATE, TWO_WRITERS, CLWB_READ, NT_STORE = (0x1000 + 0x40 * i for i in range(6))


def build(directory: Path) -> Path:
    binary = directory / "famlines"
    subprocess.run(["gcc", "-O2", "-g", "-static", "-no-pie", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def install(c, binary: Path, suffixes: str = "ab") -> None:
    for s in suffixes:
        guest.put_file(c.virt, c.dom(s), binary.read_bytes(), ON_NODE, 0o755)
        # On disk, not only in the page cache: a test forces nodes off and boots them again.
        c.virt.run(c.dom(s), ["sync"]).check("sync")


def on(c, suffix: str, *args) -> str:
    result = c.virt.run(c.dom(suffix), [ON_NODE, *map(str, args)])
    assert result.exitcode == 0, result
    return result.stdout.strip()


def play_every_case(c) -> None:
    """Every case, as famlines runs them; the values read are what the nodes saw, and on this
    emulation always the right ones."""
    on(c, "a", "write", CORRECT, 0x11, "flush")
    assert on(c, "b", "read", CORRECT, "invalidate") == "0x11"
    on(c, "a", "write", NO_FLUSH, 0x22, "noflush")
    assert on(c, "b", "read", NO_FLUSH, "invalidate") == "0x22", "the emulation hides the missing flush"
    on(c, "b", "read", NO_INVALIDATE, "cached")
    on(c, "a", "write", NO_INVALIDATE, 0x33, "flush")
    assert on(c, "b", "read", NO_INVALIDATE, "cached") == "0x33", "the emulation hides the missing invalidate"
    on(c, "a", "write", TWO_WRITERS, 0x44, "noflush")
    on(c, "b", "write", TWO_WRITERS, 0x55, "noflush")
    on(c, "b", "read", CLWB_READ, "cached")
    on(c, "a", "write", CLWB_READ, 0x66, "flush")
    assert on(c, "b", "clwbread", CLWB_READ) == "0x66"
    on(c, "a", "write", NT_STORE, 0x77, "nt")
    assert on(c, "b", "read", NT_STORE, "invalidate") == "0x77"
