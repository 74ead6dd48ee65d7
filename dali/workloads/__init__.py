"""The workloads of `doit torture`: programs that run on every node at once against the shared
device and know what every node must see.

Each workload is a module with:
    NAME, DOC        its name and one line for `doit torture --list`
    NEEDS            the targets it runs on: "dir" (a mounted filesystem), "block" (a block
                     device, read and written with O_DIRECT), "dax" (device-dax, mapped)
    WHY_NOT          {target: the one line saying why it does not run there}, where that helps
    PARAMS           its parameters and their defaults (`doit torture lock:kind=none`)
    run(ctx, rec)    on every node at once, until the time is up: returns rec.result(state)
    check(ctx)       on every node still up, after every run ended: what this node sees now
    judge(ctx, runs, checks)   on the host: the violations, by node (a Verdict)

They run inside the guests with Debian's python3 and nothing else: dali/torture.py ships this
package to each node as one zip file (zipapp) and starts it through the guest agent, once per
workload for its run (guest.py: `python3 torture.pyz run ARGS`), then once per node for every
workload's check in turn (`check-all`): a python3 start costs a node under TCG half a second
to a second of CPU, and the checks are short reads.
"""

from __future__ import annotations

import importlib.util
import io
import marshal
import time
import zipfile
from pathlib import Path

from . import append, append_turns, block, lock, mmap_shared, namespace

WORKLOADS = {m.NAME: m for m in (namespace, append, append_turns, lock, mmap_shared, block)}
HERE = Path(__file__).resolve().parent


def zipapp() -> bytes:
    """This package as a zip that `python3 FILE` runs (its __main__ at the top). Each module is
    in it twice, as source and as bytecode compiled here: Python cannot write the bytecode of
    what it imports from a zip, so without it every start compiled the package again (importing
    it under TCG took 0.66-0.73 s, and 0.41-0.45 s with the bytecode; measured 2026-12-06, one
    idle node). A python3 in a guest with another bytecode format (its magic number) skips the
    bytecode and compiles the source, as before."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__main__.py", "from workloads.guest import main\nmain()\n")
        for path in sorted(HERE.glob("*.py")):
            source, name = path.read_bytes(), f"workloads/{path.name}"
            when = time.localtime(path.stat().st_mtime)[:6]  # as zipfile's own write() dates it
            z.writestr(zipfile.ZipInfo(name, when), source, zipfile.ZIP_DEFLATED)
            z.writestr(zipfile.ZipInfo(name[:-3] + ".pyc", when), bytecode(source, name), zipfile.ZIP_DEFLATED)
    return out.getvalue()


def bytecode(source: bytes, name: str) -> bytes:
    """A .pyc of `source` that checks itself against the source's hash, not a time (PEP 552):
    the magic number, the flags (hash-based, checked), the hash, the code."""
    code = compile(source, name, "exec", dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little") + importlib.util.source_hash(source)
            + marshal.dumps(code))
