"""A second kernel to compare: Debian's newest packaged kernel of a series (by default 6.12 from
bookworm-backports, the full amd64 flavour with OCFS2 and the NVDIMM drivers as modules),
unpacked as `make modules_install INSTALL_MOD_PATH=X` lays a kernel out, for kernel.path and
kernel.modules.

    .venv/bin/python -m dali.debian_kernel          # prints the [kernel] lines for cluster.toml

Under state/cache/kernels/ (shared by the checkout's clusters, like the rest of state/cache/):
the package as the archive names it (linux-image-<release>[-unsigned]_<version>_amd64.deb) and
<release>/ unpacked from it (boot/vmlinuz-<release>, lib/modules/<release>/). The version is
never written down here: it is the newest the suite's index lists when nothing is cached, and
then the cached package, with no network at all, until asked to look again (refresh). A
download becomes the cached package only once whole and matching the signed index
(debian_archive.download); an unpacked tree is made in a scratch directory and renamed.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dali.commands import run
from dali.debian_archive import PrivateApt, download, is_partial
from dali.errors import DaliError
from dali.reporter import log
from dali.scratch import remove_abandoned_work, work_dir

SUITE = "bookworm-backports"
SERIES = "6.12"
FLAVOUR = "amd64"  # not cloud-amd64: Debian's cloud kernels have no OCFS2


@dataclass(frozen=True)
class DebianKernel:
    package: str  # linux-image-6.12.95+deb12-amd64-unsigned
    version: str  # Debian's: 6.12.95-1~bpo12+1
    release: str  # uname -r: 6.12.95+deb12-amd64
    deb: Path
    tree: Path  # kernel.modules: tree/lib/modules/<release>/

    @property
    def vmlinuz(self) -> Path:
        """kernel.path."""
        return self.tree / "boot" / f"vmlinuz-{self.release}"


def home(cache_dir: Path) -> Path:
    return Path(cache_dir) / "kernels"


def package_pattern(series: str = SERIES, flavour: str = FLAVOUR) -> re.Pattern:
    """linux-image-<release>[-unsigned] of that series and exactly that flavour (6.12.95+deb12-amd64,
    6.12.90+deb12.1-amd64, 6.1.0-50-amd64; not -cloud-amd64, -rt-amd64, -dbg); group 1 the release."""
    return re.compile(rf"^linux-image-({re.escape(series)}\.\d+(?:[+.]\w+)*(?:-\d+)?-{re.escape(flavour)})"
                      r"(-unsigned)?$")


def kernel(cache_dir: Path, series: str = SERIES, flavour: str = FLAVOUR, suite: str = SUITE,
           refresh: bool = False) -> DebianKernel:
    """The newest cached kernel of the series, unpacked; with none cached (or refresh), the
    newest the suite lists, downloaded first. One process at a time makes them."""
    where = home(cache_dir)
    where.mkdir(parents=True, exist_ok=True)
    with _held(where):
        for leftover in where.iterdir():  # under the lock, nobody else is downloading
            if is_partial(leftover):
                leftover.unlink()
        remove_abandoned_work(where)
        deb = None if refresh else newest_cached(where, series, flavour)
        if deb is None:
            deb = _download_newest(where, series, flavour, suite)
        return _unpacked(deb, series, flavour)


def newest_cached(where: Path, series: str = SERIES, flavour: str = FLAVOUR) -> Path | None:
    """The newest whole package of the series under where (a partial download has a dot-name)."""
    pattern = package_pattern(series, flavour)
    found = [deb for deb in where.glob("linux-image-*.deb") if pattern.match(_fields(deb)[0])]
    return max(found, key=lambda deb: (_version_key(_fields(deb)[1]), deb.name.count("-unsigned_")),
               default=None)


def newest_listed(stanzas: str, series: str = SERIES, flavour: str = FLAVOUR) -> tuple[str, str] | None:
    """(package, version) of the newest kernel of the series in `apt-cache show` output, the
    -unsigned package where the archive has both (the same kernel, without Secure Boot's
    signature)."""
    pattern = package_pattern(series, flavour)
    listed = []
    for stanza in re.split(r"\n\s*\n", stanzas):
        fields = dict(re.findall(r"^(Package|Version): (\S+)$", stanza, re.M))
        if "Package" in fields and "Version" in fields and pattern.match(fields["Package"]):
            listed.append((fields["Package"], fields["Version"]))
    return max(listed, key=lambda pv: (_version_key(pv[1]), pv[0].endswith("-unsigned")), default=None)


def _fields(deb: Path) -> tuple[str, str]:
    """(package, version) from the archive's file name: package_version_arch.deb, ':' as %3a."""
    parts = deb.name.split("_")
    return (parts[0], urllib.parse.unquote(parts[1])) if len(parts) == 3 else ("", "")


def _download_newest(where: Path, series: str, flavour: str, suite: str) -> Path:
    work = work_dir(where)
    try:
        apt = PrivateApt(work, suite)
        apt.update(f"for the newest Linux {series}")
        names = apt.cache("search", "--names-only", f"^linux-image-{re.escape(series)}\\.",
                          what=f"apt-cache search of {suite}'s Linux {series}")
        wanted = [n for n in re.findall(r"^(\S+) - ", names, re.M) if package_pattern(series, flavour).match(n)]
        newest = newest_listed(apt.cache("show", *wanted, what=f"apt-cache show of {suite}'s kernels"),
                               series, flavour) if wanted else None
        if newest is None:
            raise DaliError(f"Debian's {suite} on {apt.mirror} lists no linux-image-{series}.*-{flavour}: "
                            "name a series it has")
        package, version = newest
        remote = apt.uris("download", f"{package}={version}", what=f"apt-get --print-uris download {package}")
        if len(remote) != 1:
            raise DaliError(f"Debian's {suite} index gives no SHA256 for {package} {version}: run it again")
        deb = where / remote[0].name
        if not deb.exists():  # the newest is cached already: a refresh found nothing newer
            log(f"downloading {package} {version} from {suite} ({remote[0].size / 2**20:.0f} MiB) into {where}")
            started = time.monotonic()
            download(remote[0], deb, timeout=300)
            log(f"downloaded {deb.name} in {time.monotonic() - started:.1f} s")
        return deb
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpacked(deb: Path, series: str, flavour: str) -> DebianKernel:
    package, version = _fields(deb)
    release = package_pattern(series, flavour).match(package).group(1)
    tree = deb.parent / release
    if not tree.exists():  # renamed into place whole: if it is there, it is complete
        work = work_dir(deb.parent)
        try:
            run(["dpkg-deb", "-x", str(deb), str(work / release)], what=f"unpacking {deb.name}")
            os.rename(work / release, tree)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    found = DebianKernel(package, version, release, deb, tree)
    if not found.vmlinuz.is_file() or not (tree / "lib/modules" / release / "modules.order").is_file():
        raise DaliError(f"{tree} holds no boot/vmlinuz-{release} or lib/modules/{release}/modules.order: "
                        f"remove it (and {deb} if that does not help) and run it again")
    return found


@functools.cache
def _compare(a: str, b: str) -> int:
    """Debian's ordering of versions, as dpkg has it."""
    if a == b:
        return 0
    return 1 if subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0 else -1


_version_key = functools.cmp_to_key(_compare)


@contextmanager
def _held(where: Path):
    with open(where / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from dali.cluster import REPO
    from dali.errors import one_line
    parser = argparse.ArgumentParser(prog="python -m dali.debian_kernel", description=(
        "Debian's newest kernel of a series, unpacked under state/cache/kernels/ (downloaded once); "
        "prints the [kernel] lines of cluster.toml that boot it"))
    parser.add_argument("--series", default=SERIES, help=f"the kernel series (default {SERIES})")
    parser.add_argument("--flavour", default=FLAVOUR, help=f"the package's flavour (default {FLAVOUR})")
    parser.add_argument("--suite", default=SUITE, help=f"the Debian suite (default {SUITE})")
    parser.add_argument("--refresh", action="store_true", help="ask the suite for a newer one than the cached")
    args = parser.parse_args(argv)
    try:
        found = kernel(REPO / "state" / "cache", args.series, args.flavour, args.suite, args.refresh)
    except Exception as e:
        line = one_line(e)
        if line is None:
            raise
        print(f"dali: {line}", file=sys.stderr)
        return 1
    print(f"# Debian's {found.package} {found.version} ({args.suite}): uname -r {found.release}\n"
          f"[kernel]\npath = \"{found.vmlinuz}\"\nmodules = \"{found.tree}\"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
