"""A page as a user's browser shows it: Debian's Chromium, headless, on a file:// page, in a
network namespace of its own with every network feature off besides (nothing can leave the
machine), its profile and HOME in a temporary directory (it writes to HOME even with a profile
of its own: ~/.config/chromium, ~/.cache/dconf). What it rendered (the DOM after load) and what
its console said are what tests look at; a screenshot, what a user would see."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

# --no-sandbox: Chromium's sandbox refuses to run as root, as the suite does. unshare --net
# (root too) leaves it only a loopback that is down.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-crash-reporter", "--no-proxy-server",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


class Shown(NamedTuple):
    dom: str  # the document after load, as --dump-dom prints it
    errors: list[str]  # what the page's console said (a page without script says nothing), and pages it failed to load


def show(page: Path) -> Shown:
    out, err = run("--dump-dom", page.resolve().as_uri())
    errors = [line for line in err.splitlines() if "CONSOLE" in line or "Uncaught" in line or "net::ERR_" in line]
    return Shown(out, errors)


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 2000) -> None:
    run(f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri())


def lanes(page: Path) -> dict[str, int]:
    """{node: how many lanes the page shows for it}; the page must load without errors."""
    shown = show(page)
    assert not shown.errors, shown.errors
    found: dict[str, int] = {}
    for tag in re.findall(r"<[^>]*\bclass=\"[^\"]*\blane\b[^\"]*\"[^>]*>", shown.dom):
        node = re.search(r"data-node=\"([^\"]*)\"", tag)
        if node:
            found[node.group(1)] = found.get(node.group(1), 0) + 1
    return found


def run(*args: str, timeout: float = 120) -> tuple[str, str]:
    """Chromium's stdout and stderr, once it ran with args. Its output is read to the end, so
    every process of it has gone (each holds the pipes); one that outlasts the timeout is killed
    with its process group, its own: the leader, not yet waited for, keeps the group's id from
    being anyone else's."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: scripts/setup installs it"
    with tempfile.TemporaryDirectory(prefix="dali-chromium-") as home:
        env = {**os.environ, "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config", "XDG_CACHE_HOME": f"{home}/.cache"}
        proc = subprocess.Popen(["unshare", "--net", chromium, *FLAGS, f"--user-data-dir={home}/profile", *args],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    assert proc.returncode == 0, err[-2000:]
    return out, err
