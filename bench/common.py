"""What the benchmarks share: printing markdown as they go (and keeping it for their .md file),
running `doit` on a cluster file the way a user types it, timed, and an older commit of dali
checked out beside this one for before/after comparisons."""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from dali.cluster import REPO

results: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    results.append(line)


def write(name: str) -> None:
    """Everything said so far, as bench/NAME."""
    (REPO / "bench" / name).write_text("\n".join(results) + "\n")


def doit(config: Path, *args: str, tree: Path = REPO, check: bool = True) -> float:
    """`doit ARGS config=CONFIG` from the checkout `tree` (with its own dali/ and tasks/), without
    this shell's DALI_* settings; the seconds it took. A failure ends the benchmark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALI_")}
    env["PYTHONPATH"] = str(tree)
    t0 = time.monotonic()
    run = subprocess.run([str(REPO / ".venv/bin/doit"), *args, f"config={config}"], cwd=tree, env=env,
                         capture_output=True, text=True)
    if check and run.returncode:
        sys.exit(f"doit {' '.join(args)} ({tree}) failed:\n{run.stdout}{run.stderr}")
    return time.monotonic() - t0


def torture_ops(config: Path, workloads: tuple[str, ...], seconds: int, tree: Path = REPO) -> dict[str, int]:
    """`doit torture --seconds SECONDS WORKLOADS` run as doit() runs doit; the operations each
    workload did, from its row of the table (its exit status is the run's verdict, not the
    benchmark's: a run with a violation still counts its operations)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALI_")}
    env["PYTHONPATH"] = str(tree)
    run = subprocess.run([str(REPO / ".venv/bin/doit"), "torture", "--seconds", str(seconds), *workloads,
                          f"config={config}"], cwd=tree, env=env, capture_output=True, text=True)
    ops = {}
    for line in run.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+\S+\s+(\d+)", line)
        if m and m.group(1) in workloads:
            ops[m.group(1)] = int(m.group(2))
    return ops


def import_floor() -> float:
    """Seconds for `python -c "import doit, libvirt, jinja2"`: what no doit run can beat. Started
    the way doit() starts this checkout's doit (from it, PYTHONPATH naming it, output captured)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    subprocess.run([str(REPO / ".venv/bin/python"), "-c", "import doit, libvirt, jinja2"], cwd=REPO,
                   env=env, check=True, capture_output=True)
    return time.monotonic() - t0


@contextmanager
def checkout_of(rev: str, where: Path, own: tuple[str, ...] = ()):
    """dali at `rev` in a temporary git worktree at `where`, sharing this checkout's debootstrap
    cache (state/cache, by recipe); removed afterwards. Its clusters are its own: a cluster's
    identity includes its checkout (dali/cluster.py). The entries of state/cache named in `own`
    are copied instead of shared: what `rev` builds there itself (the coherence plugin, beside
    its QEMU) must not replace this checkout's."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)
    try:
        (where / "state").mkdir(exist_ok=True)
        if not own:
            (where / "state/cache").symlink_to(REPO / "state/cache")
        else:
            (where / "state/cache").mkdir()
            for entry in (REPO / "state/cache").iterdir():
                if entry.name in own:
                    shutil.copytree(entry, where / "state/cache" / entry.name, symlinks=True)
                else:
                    (where / "state/cache" / entry.name).symlink_to(entry)
        _renamed_as_today(where / "dodo.py")
        yield where
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)])


def _renamed_as_today(dodo: Path) -> None:
    """An older dodo.py's task_torture renamed as today's: this checkout's doit (.venv) has a
    `torture` command (dali/verbs.py), and doit refuses to load a dodo.py with a task creator
    named as a command. Only the creator's name changes; its tasks are the same."""
    dodo.write_text(dodo.read_text().replace("def task_torture(", "def task_bench("))


def cluster_file(work: Path, tag: str, nodes: int) -> Path:
    """work/TAG.toml: a cluster of `nodes` default nodes (the original and clones b, c, ...) on
    an isolated network, its data in work/TAG, with a boot timeout for a loaded machine."""
    path = work / f"{tag}.toml"
    clones = ", ".join(f'"{c}"' for c in (string.ascii_lowercase + string.digits)[1:nodes])
    path.write_text(f'tag = "{tag}"\nclones = [{clones}]\ndir = "{work / tag}"\n'
                    '[network]\nforward = "none"\n[timeouts]\nboot = 1800\n')
    return path


def before_and_after(name: str, default_nodes: int, default_rev: str, measure,
                     own: tuple[str, ...] = ()) -> None:
    """The frame of a before/after bench, `bench/NAME.py [N] [BEFORE_REV]`: measure(work, nodes,
    rev, old_tree) with BEFORE_REV checked out in a fresh directory under /var/tmp (work), which
    is removed afterwards (`own`: as checkout_of's); then what was said is written to
    bench/NAME.md."""
    work = Path(tempfile.mkdtemp(prefix=f"dali-bench-{name}-", dir="/var/tmp"))
    work.chmod(0o755)  # qemu opens the disks and the FAM under it
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else default_nodes
    rev = sys.argv[2] if len(sys.argv) > 2 else default_rev
    try:
        with checkout_of(rev, work / "before", own) as old_tree:
            measure(work, nodes, rev, old_tree)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write(f"{name}.md")
