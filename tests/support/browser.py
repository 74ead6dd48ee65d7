"""A page as a user's browser shows it: Debian's Chromium, headless, on a file:// page with
every network feature off (nothing leaves the machine), its profile in a temporary directory.
What it rendered (the DOM after load) and what its console said are what tests look at."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--enable-logging=stderr", "--v=0"]


class Shown(NamedTuple):
    dom: str  # the document after load, as --dump-dom prints it
    errors: list[str]  # what the page's console reported as errors, and pages it failed to load


def show(page: Path) -> Shown:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: scripts/setup installs it"
    with tempfile.TemporaryDirectory(prefix="dali-chromium-") as profile:
        r = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                            page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines()
              if "CONSOLE" in line or "Uncaught" in line or "net::ERR_" in line]
    return Shown(r.stdout, errors)


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
