"""Packages of a Debian suite the host's apt does not list (bookworm-backports), fetched
without touching the host's apt state, and files checked against the suite's signed index.

PrivateApt is apt-get and apt-cache with a sources.list and a lists directory of dali's own
(apt's Dir::* options): `apt-get update` there checks the suite's InRelease against the host's
Debian keyring as apt always does, so a package's SHA256 read from that index is one the
archive signed. download() fetches a file under a temporary name, checks it against that hash
and renames it: a file under its final name is always whole. The QEMU of checked clusters
(dali/coherence/qemu.py) and the Debian kernels to compare (dali/debian_kernel.py) use both.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dali.apt_sources import host_apt_mirror
from dali.commands import run
from dali.errors import DaliError


@dataclass(frozen=True)
class Remote:
    """A file of the archive as its index gives it (`apt-get --print-uris`)."""
    url: str
    name: str
    size: int
    sha256: str


# 'URL' NAME SIZE SHA256:HASH, one line per file (download, source); older apts print MD5Sum:
_URI_LINE = re.compile(r"^'(\S+)' (\S+) (\d+) SHA256:([0-9a-f]{64})$", re.M)


class PrivateApt:
    """apt with its own sources.list and lists under `where` (made here; the caller removes it)."""

    def __init__(self, where: Path, suite: str, sources: bool = False, mirror: str | None = None):
        self.suite = suite
        self.mirror = mirror or host_apt_mirror()
        (where / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        sources_list = where / "sources.list"
        sources_list.write_text(f"deb {self.mirror} {suite} main\n"
                                + (f"deb-src {self.mirror} {suite} main\n" if sources else ""))
        self.options = ["-q", "-o", f"Dir::Etc::sourcelist={sources_list}", "-o", "Dir::Etc::sourceparts=-",
                        "-o", f"Dir::State::Lists={where / 'lists'}", "-o", "APT::Get::List-Cleanup=0"]

    def update(self, why: str) -> None:
        self.get("update", what=f"apt-get update of {self.suite} ({why})", timeout=300)

    def get(self, *args: str, what: str, cwd: Path | None = None, timeout: float | None = None) -> str:
        command = ["apt-get", *self.options, *args]
        if cwd is not None:  # apt-get download writes into the current directory
            command = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", str(cwd), *command]
        return run(command, what=what, timeout=timeout)

    def cache(self, *args: str, what: str) -> str:
        return run(["apt-cache", *self.options, *args], what=what)

    def uris(self, *args: str, what: str) -> list[Remote]:
        """`apt-get --print-uris ARGS` (download PKG=VER, source PKG=VER): the files, with their
        size and SHA256 from the index."""
        out = self.get("--print-uris", *args, what=what)
        return [Remote(url, name, int(size), sha) for url, name, size, sha in _URI_LINE.findall(out)]


def download(remote: Remote, dest: Path, timeout: float = 120) -> None:
    """remote's file as dest, whole and matching its index, or not at all: written under a
    temporary name beside dest (a dot-name with this process's id), checked, renamed."""
    # Here, not at the top: every doit loads this module (domain.py names the checked QEMU), and
    # these cost a no-op doit 8 ms (python -X importtime).
    import hashlib
    import urllib.request
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(remote.url, timeout=timeout) as response, open(partial, "wb") as f:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != remote.sha256 or partial.stat().st_size != remote.size:
            raise DaliError(f"{remote.url} does not match the hash in Debian's index: a broken "
                            "download or mirror; run it again")
        os.replace(partial, dest)
    except OSError as e:
        raise DaliError(f"downloading {remote.url} failed ({e}): check the network, then run it again") from None
    finally:
        partial.unlink(missing_ok=True)


def is_partial(path: Path) -> bool:
    """A temporary name of download()'s, never a finished file."""
    return path.name.startswith(".") and path.name.endswith(".partial")
