"""The QEMU that checked nodes run: Debian's backports build, beside the host's own.

Debian 12's QEMU 7.2 gives plugins no register reads, so a plugin there cannot tell which line
a CLFLUSH or CLWB names; QEMU 9.0 added them. bookworm-backports has QEMU 10 (Debian's own
packages, built for bookworm's libraries). Rather than move the whole host to it (and to the
libvirt 11 it comes with), checked clusters alone run it, unpacked under state/cache/ (one copy
per checkout, fetched on first use: about 15 MB of packages and the 40 MB source tarball the
plugin header comes from, a few seconds here). docs/coherence.md says why, with the figures.

The host's libvirt 9.0 starts it like any emulator (<emulator> in the domain), through a small
wrapper: QEMU 10 would otherwise load the host's 7.2 modules (it searches /usr/lib/.../qemu,
fails their build check and aborts) and the host's 7.2 firmware blobs; the wrapper points both
at the unpacked ones (QEMU_MODULE_DIR, -L).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from dali.commands import run
from dali.debian_archive import PrivateApt, download
from dali.errors import DaliError
from dali.reporter import log

SUITE = "bookworm-backports"
OLDEST = (9, 0)  # qemu_plugin_read_register
# The emulator and every module package: each module QEMU 10 knows must be found in its own
# directory, or it falls back to the host's 7.2 one and aborts (see above).
PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "qemu-system-gui",
            "qemu-system-modules-opengl", "qemu-system-modules-spice", "qemu-block-extra")
WRAPPER = """#!/bin/sh
# dali: QEMU {version} from Debian's {suite}, for clusters with device.coherence set
# (dali/coherence/qemu.py). Its own modules and firmware, not the host's QEMU's.
here={here}
QEMU_MODULE_DIR=$here/root/usr/lib/x86_64-linux-gnu/qemu exec $here/root/usr/bin/qemu-system-x86_64 -L $here/root/usr/share/qemu "$@"
"""


def home(cache_dir: Path) -> Path:
    return cache_dir / "qemu-coherence"


def emulator(cache_dir: Path) -> Path:
    """What a checked node's <emulator> names."""
    return home(cache_dir) / "qemu-system-x86_64"


def header_dir(cache_dir: Path) -> Path:
    """Where qemu-plugin.h of that QEMU is (dali's plugin is built against it)."""
    return home(cache_dir) / "include"


def version(cache_dir: Path) -> str:
    """The Debian version of the unpacked QEMU, '' if there is none yet."""
    try:
        return (home(cache_dir) / "VERSION").read_text().strip()
    except OSError:
        return ""


def is_ready(cache_dir: Path) -> bool:
    return bool(version(cache_dir)) and emulator(cache_dir).exists() and (header_dir(cache_dir) / "qemu-plugin.h").exists()


@contextmanager
def held(cache_dir: Path):
    """The checkout's clusters share one QEMU and plugin: one doit at a time makes them."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "qemu-coherence.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure(cache_dir: Path) -> None:
    with held(cache_dir):
        if not is_ready(cache_dir):  # another doit may have made it while this one waited
            fetch(cache_dir)


def fetch(cache_dir: Path) -> None:
    """QEMU of bookworm-backports unpacked under cache_dir, whole or not at all: made in a
    directory of its own and renamed into place (a killed fetch leaves a .partial that the next
    one removes)."""
    target = home(cache_dir)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    apt = PrivateApt(partial, SUITE, sources=True)
    log(f"coherence: fetching QEMU from Debian's {SUITE} ({apt.mirror}) into {target}")
    apt.update("for device.coherence")
    wanted = _candidate(apt)
    _check_new_enough(wanted)
    debs = partial / "debs"
    debs.mkdir()
    apt.get("download", *(f"{p}={wanted}" for p in PACKAGES), what=f"downloading QEMU {wanted}",
            cwd=debs, timeout=600)
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(partial / "root")], what=f"unpacking {deb.name}")
    _plugin_header(apt, wanted, partial)
    shutil.rmtree(debs)
    shutil.rmtree(partial / "lists")
    wrapper = partial / "qemu-system-x86_64"
    wrapper.write_text(WRAPPER.format(version=wanted, suite=SUITE, here=_sh_word(str(target))))
    (partial / "VERSION").write_text(wanted + "\n")
    _world_readable(partial)  # qemu runs as libvirt-qemu, not root
    wrapper.chmod(0o755)
    # What was there is incomplete (is_ready said no), so no node can have started on it.
    shutil.rmtree(target, ignore_errors=True)
    os.rename(partial, target)
    log(f"coherence: QEMU {wanted} ready ({_reported_version(cache_dir)})")


def _candidate(apt: PrivateApt) -> str:
    out = apt.cache("policy", "qemu-system-x86", what="apt-cache policy qemu-system-x86")
    versions = re.findall(r"^\s+(?:\*\*\* )?(\S+) \d+\n\s+\d+ \S+ " + re.escape(SUITE) + "/", out, re.M)
    if not versions:
        raise DaliError(f"Debian's {SUITE} has no qemu-system-x86 on the mirror the host's apt uses "
                        f"({apt.mirror}): device.coherence needs QEMU 9 or newer from there; "
                        "set device.coherence = \"off\"")
    return versions[0]


def _check_new_enough(debian_version: str) -> None:
    upstream = re.match(r"(?:\d+:)?(\d+)\.(\d+)", debian_version)
    if not upstream or tuple(map(int, upstream.groups())) < OLDEST:
        raise DaliError(f"{SUITE}'s QEMU is {debian_version}, too old for device.coherence (it needs "
                        f"QEMU {OLDEST[0]}.{OLDEST[1]} or newer, whose plugins read registers): set "
                        "device.coherence = \"off\"")


def _plugin_header(apt: PrivateApt, wanted: str, partial: Path) -> None:
    """include/qemu/qemu-plugin.h from Debian's source tarball of the same QEMU: no package
    ships it. The tarball is checked against the hash the suite's Sources index gives."""
    import tarfile  # here, not at the top: see debian_archive.download
    orig = [f for f in apt.uris("source", f"qemu={wanted}", what="apt-get --print-uris source qemu")
            if f.name.endswith(".orig.tar.xz")]
    if not orig:
        raise DaliError(f"Debian's {SUITE} lists no source tarball for qemu {wanted}: "
                        "device.coherence cannot build its plugin; set device.coherence = \"off\"")
    tarball = partial / "qemu.orig.tar.xz"
    download(orig[0], tarball)
    (partial / "include").mkdir()
    with tarfile.open(tarball) as tar:
        member = next((m for m in tar if m.name.endswith("/include/qemu/qemu-plugin.h")), None)
        if member is None:
            raise DaliError(f"{orig[0].url} holds no include/qemu/qemu-plugin.h: set device.coherence = \"off\"")
        (partial / "include" / "qemu-plugin.h").write_bytes(tar.extractfile(member).read())
    tarball.unlink()


def _reported_version(cache_dir: Path) -> str:
    out = run([str(emulator(cache_dir)), "--version"], what="the checked QEMU's --version")
    return out.splitlines()[0] if out else "?"


def _sh_word(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _world_readable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0))
