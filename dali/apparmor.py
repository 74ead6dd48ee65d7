"""Let qemu open the FAM under AppArmor (seed step 2, second half).

libvirt copies TEMPLATE.qemu into each domain's profile. A FAM passed through qemu:commandline
is invisible to virt-aa-helper, so the template gets one rule for the FAM's exact path: the real
path, symlinks followed, because that is what AppArmor checks. The seed warns that a syntax
error here only shows at VM start with unhelpful messages, so the edited template is checked
with apparmor_parser before it replaces the original, atomically. Our line ends in a comment
naming the cluster: clean removes exactly it.

The template is shared by every cluster on the host, so each edit holds a lock on its directory
(flock, no file left behind) and re-reads the template under it. The first edit keeps the
template as it was before dali touched it as TEMPLATE.qemu.dali-backup; a removal that leaves
the template as it was then deletes the backup.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from dali import cleaning
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.render import render
from dali.reporter import log

INCLUDE = "#include <abstractions/libvirt-qemu>"
# AppArmor reads these as globbing or quoting in a path; a FAM path with them cannot be one rule.
_PATTERN_CHARS = set('*?[]{}^"\\')


def fam_real_path(cluster: Cluster) -> str:
    real = os.path.realpath(cluster.fam_path)
    # Not one line of the template, and not a line dali could find again (splitlines() breaks
    # at \r, U+2028 and more): each run would add another copy, and clean would remove none.
    bad = sorted((_PATTERN_CHARS & set(real)) | {c for c in real if not c.isprintable()})
    if bad:
        raise DaliError(f"the FAM's real path {real!r} contains {' '.join(repr(c) for c in bad)}, "
                        "which AppArmor reads as a pattern: move it, or point the FAM symlink "
                        "at a path without * ? [ ] { } ^ \" \\")
    return real


def rule(cluster: Cluster) -> str:
    return render("apparmor-rule.j2", fam=fam_real_path(cluster), tag=cluster.tag)


def _applicable(cluster: Cluster) -> str | None:
    """Why the template is left alone on this host, or None if it is to be edited."""
    if cluster.apparmor_template.is_symlink():
        raise DaliError(f"{cluster.apparmor_template} (apparmor.template) is a symlink: dali edits "
                        "libvirt's template itself, never a file a link points at; set "
                        "apparmor.template to the real file")
    if not cluster.apparmor_template.exists():
        return f"no {cluster.apparmor_template} (apparmor.template), nothing to allow"
    if not shutil.which("apparmor_parser"):
        return "apparmor_parser is missing (package apparmor), so the template cannot be checked"
    return None


def has_rule(cluster: Cluster) -> bool | None:
    if _applicable(cluster):
        return None  # nothing to check; run_once lets the skip notice show once
    return rule(cluster) in cluster.apparmor_template.read_text().splitlines(keepends=True)


def is_as_wanted(cluster: Cluster) -> bool | None:
    """The seed's style needs our rule in the template; libvirt's own NVDIMM device (native)
    needs none: virt-aa-helper grants the FAM to each domain's own profile."""
    found = has_rule(cluster)
    return found if found is None else found == (cluster.device_style == "seed")


def ensure(cluster: Cluster) -> None:
    if cluster.device_style == "seed":
        add_rule(cluster)
    else:
        remove_rule(cluster)  # a cluster that used to be in the seed's style


def _backup(template: Path) -> Path:
    return template.with_name(template.name + ".dali-backup")


def _candidate(template: Path) -> Path:
    return template.with_name("." + template.name + ".dali-new")


@contextmanager
def editing_lock(template: Path):
    """The template's directory lock, which every dali holds while its candidate exists."""
    fd = os.open(template.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def _editing(template: Path):
    """Hold the template's directory lock; a candidate left by a killed run is dropped first."""
    with editing_lock(template):
        _candidate(template).unlink(missing_ok=True)
        yield


def _replace_checked(template: Path, text: str) -> None:
    """Write text as the template, atomically, once apparmor_parser accepts it."""
    candidate = _candidate(template)
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                 os.stat(template).st_mode & 0o777)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    check = subprocess.run(["apparmor_parser", "-Q", "-K", "--skip-cache", str(candidate)],
                           capture_output=True, text=True)
    if check.returncode != 0:
        candidate.unlink()
        last = (check.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DaliError(f"{template} would not parse after dali's edit, so it was left as it was: "
                        f"{last} (fix the template, or set apparmor.template)")
    candidate.replace(template)


def add_rule(cluster: Cluster) -> None:
    why_not = _applicable(cluster)
    if why_not:
        log(f"apparmor: skipped: {why_not}")
        return
    template = cluster.apparmor_template
    ours = rule(cluster)
    with _editing(template):
        lines = template.read_text().splitlines(keepends=True)
        if ours in lines:
            return
        try:
            at = next(i for i, line in enumerate(lines) if line.strip() == INCLUDE) + 1
        except StopIteration:
            raise DaliError(f"{template} has no '{INCLUDE}' line to add the FAM rule after: "
                            "restore libvirt's template or set apparmor.template") from None
        if not _backup(template).exists():
            shutil.copy2(template, _backup(template))
        lines.insert(at, ours)
        text = "".join(lines)
        if ours not in text.splitlines(keepends=True):  # fam_real_path refuses what would do this
            raise DaliError(f"the FAM rule for {fam_real_path(cluster)} would not be one line of "
                            f"{template}: move the FAM to a plainer path")
        _replace_checked(template, text)
    log(f"apparmor: {template} allows {fam_real_path(cluster)}")


def remove_rule(cluster: Cluster, dryrun: bool = False) -> None:
    if _applicable(cluster):
        return
    template = cluster.apparmor_template
    ours = rule(cluster)
    what = f"for {fam_real_path(cluster)} in {template}"
    if dryrun:
        if ours in template.read_text().splitlines(keepends=True):
            cleaning.said("AppArmor rule", what, dryrun)
        return
    with _editing(template):
        lines = template.read_text().splitlines(keepends=True)
        if ours in lines:
            _replace_checked(template, "".join(line for line in lines if line != ours))
            cleaning.said("AppArmor rule", what, dryrun)
        # The backup is the template before the first dali line went in: once the template is
        # that again, the host is as it was and the backup has nothing more to give.
        backup = _backup(template)
        if backup.exists() and backup.read_text() == template.read_text():
            backup.unlink()
