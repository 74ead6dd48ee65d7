"""`doit pssh CMD` and `doit pput SRC DEST`: a shell command, or a file, on every running node
(or the ones named) at once, through the guest agent: no network and no ssh needed.

Each node's output is printed under its name as soon as that node is done, then one line per
node with its exit status. A node that failed, or did not answer, makes the whole command fail
with one line naming it. pput writes the file byte for byte (in chunks, then renamed into place)
with the source's mode, and checks its sha256 on every node.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import libvirt

from dali import guest
from dali.cluster import Cluster
from dali.errors import DaliError, one_line
from dali.fanout import each
from dali.lifecycle import running
from dali.storage import Storage
from dali.text import visible
from dali.virt import Libvirt

def _running(cluster: Cluster, files: Storage, virt: Libvirt, names) -> tuple[list, list[str]]:
    """(node, domain) of the chosen nodes that run (a booting one waited for), and the names of
    those named that do not: a node named but not there is a failure, one left out is not."""
    up, down = running(cluster, files, virt, names)
    return up, down if names else []


def _on_each(doms, work) -> dict[str, str]:
    """work(node, dom) -> (status, output) on every node at once; print each node's output as
    it is done; return each node's status."""
    def guarded(node, dom):
        try:
            return work(node, dom)
        except (DaliError, libvirt.libvirtError) as e:
            return "failed", one_line(e) + "\n"

    def show(node, result):
        status, output = result
        output = visible(output)
        sys.stdout.write(f"--- {node.name} ({status})\n{output}")
        if output and not output.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()

    results = each(doms, guarded, on_done=show)
    return {node.name: status for (node, _), (status, _) in zip(doms, results)}


def _report(statuses: dict[str, str], down: list[str], what: str) -> None:
    for name in sorted(statuses):
        print(f"{name}: {statuses[name]}")
    failed = [f"{n} ({s})" for n, s in sorted(statuses.items()) if s != "ok" and s != "exit 0"]
    failed += [f"{n} (not running)" for n in down]
    if failed:
        raise DaliError(f"{what} failed on {', '.join(failed)}")
    if not statuses:
        raise DaliError("no node is running: doit start first")


def pssh(cluster: Cluster, files: Storage, virt: Libvirt, command: list[str], on: str = "",
         timeout: int = 3600) -> None:
    line = " ".join(command)
    doms, down = _running(cluster, files, virt, [n for n in on.split(",") if n])

    def run(node, dom):
        result = virt.run(dom, ["/bin/sh", "-c", line], timeout=timeout)
        return f"exit {result.exitcode}", result.stdout + result.stderr

    _report(_on_each(doms, run), down, f"'{line}'")


def pput(cluster: Cluster, files: Storage, virt: Libvirt, source: Path, dest: str, on: str = "") -> None:
    try:
        data = source.read_bytes()
        mode = source.stat().st_mode & 0o7777
    except OSError as e:
        raise DaliError(f"cannot read {source} ({e.strerror}): give a readable file") from None
    if dest.endswith("/"):
        dest += source.name
    digest = hashlib.sha256(data).hexdigest()
    doms, down = _running(cluster, files, virt, [n for n in on.split(",") if n])

    def put(node, dom):
        guest.put_file(virt, dom, data, dest, mode)
        seen = guest.sha256(virt, dom, dest)
        return ("ok" if seen == digest else "sha256 differs"), f"{dest}: {len(data)} bytes, sha256 {seen}\n"

    _report(_on_each(doms, put), down, f"pput {source} {dest}")
