"""dali's QEMU plugin (c/plugin.c, c/model.c, c/decode.c), built on first use with the host's
gcc against the plugin header of the QEMU that loads it (qemu.py), kept beside that QEMU: a
new QEMU gets a plugin built for it."""

from __future__ import annotations

import os
from pathlib import Path

from dali.coherence import qemu
from dali.commands import run

SOURCE_DIR = Path(__file__).parent / "c"
SOURCES = ("plugin.c", "model.c", "decode.c")
NAME = "libdalicoherence.so"


def sources() -> list[Path]:
    return [SOURCE_DIR / name for name in SOURCES] + sorted(SOURCE_DIR.glob("*.h"))


def path(cache_dir: Path) -> Path:
    return qemu.home(cache_dir) / NAME


def is_built(cache_dir: Path) -> bool:
    """Built, and after every source changed (decided from the files: the plugin is shared by
    the checkout's clusters, whose doit databases each know only their own runs)."""
    try:
        built = path(cache_dir).stat().st_mtime
    except OSError:
        return False
    return all(source.stat().st_mtime <= built for source in sources())


def ensure(cache_dir: Path) -> None:
    with qemu.held(cache_dir):
        if not is_built(cache_dir):
            build(cache_dir)


def build(cache_dir: Path) -> None:
    """The plugin compiled into a new file, then renamed over the old one: a node that has
    the old one loaded keeps it, the next boot gets the new one."""
    target = path(cache_dir)
    partial = target.with_name(target.name + ".partial")
    glib = run(["pkg-config", "--cflags", "glib-2.0"],
               what="pkg-config --cflags glib-2.0 (libglib2.0-dev: scripts/setup installs it)").split()
    run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", *glib, "-I", str(qemu.header_dir(cache_dir)),
         *(str(SOURCE_DIR / name) for name in SOURCES), "-o", str(partial), "-lpthread"],
        what="compiling dali's QEMU plugin (needs gcc and libglib2.0-dev: scripts/setup)")
    partial.chmod(0o755)  # loaded by qemu as libvirt-qemu
    os.rename(partial, target)
