"""What the benchmarks share: printing markdown as they go (and keeping it for their .md file),
running `doit` on a cluster file the way a user types it, timed, and an older commit of dali
checked out beside this one for before/after comparisons."""

from __future__ import annotations

import os
import subprocess
import sys
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


def import_floor() -> float:
    """Seconds for `python -c "import doit, libvirt, jinja2"`: what no doit run can beat. Started
    the way doit() starts this checkout's doit (from it, PYTHONPATH naming it, output captured)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    subprocess.run([str(REPO / ".venv/bin/python"), "-c", "import doit, libvirt, jinja2"], cwd=REPO,
                   env=env, check=True, capture_output=True)
    return time.monotonic() - t0


@contextmanager
def checkout_of(rev: str, where: Path):
    """dali at `rev` in a temporary git worktree at `where`, sharing this checkout's debootstrap
    cache (state/cache, by recipe); removed afterwards. Its clusters are its own: a cluster's
    identity includes its checkout (dali/cluster.py)."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)
    try:
        (where / "state").mkdir(exist_ok=True)
        (where / "state/cache").symlink_to(REPO / "state/cache")
        yield where
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)])
