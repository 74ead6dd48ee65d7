"""The workloads of `doit torture`: programs that run on every node at once against the shared
device and know what every node must see.

Each workload is a module with:
    NAME, DOC        its name and one line for `doit torture --list`
    NEEDS            the targets it runs on: "dir" (a mounted filesystem), "block" (a block
                     device, read and written with O_DIRECT), "dax" (device-dax, mapped)
    WHY_NOT          {target: the one line saying why it does not run there}, where that helps
    PARAMS           its parameters and their defaults (`doit torture lock:kind=none`)
    run(ctx, rec)    on every node at once, until the time is up: returns rec.result(state)
    check(ctx)       on every node, after every run ended: what this node sees now
    judge(ctx, runs, checks)   on the host: the violations, by node (a Verdict)

They run inside the guests with Debian's python3 and nothing else: dali/torture.py ships this
package to each node as one zip file (zipapp) and starts it through the guest agent.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from . import append, append_turns, block, lock, mmap_shared, namespace

WORKLOADS = {m.NAME: m for m in (namespace, append, append_turns, lock, mmap_shared, block)}
HERE = Path(__file__).resolve().parent


def zipapp() -> bytes:
    """This package as a zip that `python3 FILE` runs (its __main__ at the top)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__main__.py", "from workloads.guest import main\nmain()\n")
        for path in sorted(HERE.glob("*.py")):
            z.write(path, f"workloads/{path.name}")
    return out.getvalue()
