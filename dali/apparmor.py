"""Let qemu open the FAM under AppArmor (seed step 2, second half).

libvirt copies TEMPLATE.qemu into each domain's profile. A FAM passed through qemu:commandline
is invisible to virt-aa-helper, so the template gets one rule for the FAM's exact path. The
seed warns that a syntax error here only shows at VM start with unhelpful messages, so the
edited template is checked with apparmor_parser before it replaces the original, atomically,
with a backup beside it. Our line ends in a comment naming the cluster: clean removes exactly it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from dali.cluster import Cluster
from dali.errors import DaliError
from dali.render import render
from dali.reporter import log

INCLUDE = "#include <abstractions/libvirt-qemu>"


def rule(cluster: Cluster) -> str:
    return render("apparmor-rule.j2", fam=str(cluster.fam_path), tag=cluster.tag)


def _applicable(cluster: Cluster) -> str | None:
    """Why the template is left alone on this host, or None if it is to be edited."""
    if not cluster.apparmor_template.exists():
        return f"no {cluster.apparmor_template} (apparmor.template), nothing to allow"
    if not shutil.which("apparmor_parser"):
        return "apparmor_parser is missing (package apparmor), so the template cannot be checked"
    return None


def has_rule(cluster: Cluster) -> bool | None:
    if _applicable(cluster):
        return None  # nothing to check; run_once lets the skip notice show once
    return rule(cluster) in cluster.apparmor_template.read_text().splitlines(keepends=True)


def _backup(template: Path) -> Path:
    return template.with_name(template.name + ".dali-backup")


def _replace_checked(template: Path, text: str) -> None:
    """Write text as the template, atomically, once apparmor_parser accepts it."""
    candidate = template.with_name("." + template.name + ".dali-new")
    candidate.write_text(text)
    shutil.copymode(template, candidate)
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
    lines = cluster.apparmor_template.read_text().splitlines(keepends=True)
    ours = rule(cluster)
    if ours in lines:
        return
    try:
        at = next(i for i, line in enumerate(lines) if line.strip() == INCLUDE) + 1
    except StopIteration:
        raise DaliError(f"{cluster.apparmor_template} has no '{INCLUDE}' line to add the FAM rule "
                        "after: restore libvirt's template or set apparmor.template")
    lines.insert(at, ours)
    shutil.copy2(cluster.apparmor_template, _backup(cluster.apparmor_template))
    _replace_checked(cluster.apparmor_template, "".join(lines))
    log(f"apparmor: {cluster.apparmor_template} allows {cluster.fam_path}")


def remove_rule(cluster: Cluster, dryrun: bool = False) -> None:
    if _applicable(cluster):
        return
    lines = cluster.apparmor_template.read_text().splitlines(keepends=True)
    ours = rule(cluster)
    if dryrun:
        if ours in lines:
            log(f"would remove the FAM rule from {cluster.apparmor_template}")
        return
    if ours in lines:
        _replace_checked(cluster.apparmor_template, "".join(l for l in lines if l != ours))
    # The backup was taken before our line went in: once the template is that again, it has
    # served its purpose and the host is as it was.
    backup = _backup(cluster.apparmor_template)
    if backup.exists() and backup.read_text() == cluster.apparmor_template.read_text():
        backup.unlink()
