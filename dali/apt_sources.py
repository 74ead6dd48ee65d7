"""Which Debian mirror the host's apt uses, read from its sources like apt reads them.

Why: the host's mirror is the one known to be reachable from here (a local mirror, a proxy, a
network that only allows that host), so the guest image is best fetched from it too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Suites and components of Debian's own archive. A repository that uses other names
# (nodesource's "nodistro", google's "cloud-sdk-bookworm", docker's "stable") is not a Debian mirror.
_DEBIAN_CODENAMES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                     "stable", "testing", "unstable", "oldstable", "oldoldstable", "experimental"}
_DEBIAN_SUITE_SUFFIXES = ("", "-updates", "-backports", "-backports-sloppy", "-proposed-updates")
_DEBIAN_COMPONENTS = {"main", "contrib", "non-free", "non-free-firmware"}


def host_apt_mirror(sources_dirs: Iterable[str] = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")) -> str:
    """The Debian mirror URL the host's apt uses; fall back to http://deb.debian.org/debian.

    Reads one-line `sources.list` files and deb822 `*.sources` files, like apt does: in a
    directory only `*.list` and `*.sources` count, so `foo.sources.disabled-by-x` is ignored.
    Security repositories and third-party repositories (nodesource, google, docker, ...) are skipped.
    """
    for entry in sources_dirs:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
        elif path.is_file():
            files = [path]
        else:
            continue
        for file in files:
            try:
                text = file.read_text(errors="replace")
            except OSError:
                continue  # unreadable: apt would complain, we just look elsewhere
            repos = _parse_deb822(text) if file.suffix == ".sources" else _parse_one_line(text)
            for uri, suite, components in repos:
                if _is_debian_mirror(uri, suite, components):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def _parse_one_line(text: str) -> list[tuple[str, str, list[str]]]:
    """(uri, suite, components) of each `deb [options] uri suite comp...` line."""
    repos = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue  # deb-src and anything else gives no binary packages
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=amd64 signed-by=...]
        words = line.split()
        if len(words) >= 4:
            repos.append((words[1], words[2], words[3:]))
    return repos


def _parse_deb822(text: str) -> list[tuple[str, str, list[str]]]:
    """(uri, suite, components) for each URI x suite of each enabled `Types: deb` stanza."""
    repos = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:  # continuation of a multi-line field
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        components = fields.get("components", "").split()
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                repos.append((uri, suite, components))
    return repos


def _is_debian_mirror(uri: str, suite: str, components: list[str]) -> bool:
    """A repository of Debian's main archive (not security, not a third party), usable by debootstrap."""
    if not re.match(r"^(https?|file)://", uri):
        return False  # cdrom:, mirror+file:, tor+http: ... debootstrap cannot use them
    if "security" in uri or "security" in suite or "/updates" in suite:
        return False  # the security archive has no base system to bootstrap from
    if not any(suite in (name + suffix for suffix in _DEBIAN_SUITE_SUFFIXES) for name in _DEBIAN_CODENAMES):
        return False
    if not components or not set(components) <= _DEBIAN_COMPONENTS:
        return False
    # A Debian mirror is on *.debian.org or serves the archive from a ".../debian" directory.
    host_and_path = uri.split("://", 1)[1]
    host = host_and_path.split("/", 1)[0]
    return host.endswith("debian.org") or "debian" in host_and_path.strip("/").split("/")[1:]
