"""`doit verify`: the cluster's self-test of the shared device, on the running nodes.

Every node must see namespace0.0 in the mode device.mode asks for (fsdax, devdax or raw), with
the uuid and size the FAM holds (the same uuid shows it did not reconfigure the namespace itself), every node's write must be read by
every other node, and hostnames, machine-ids and addresses must be distinct. It prints a table
and fails with one line naming the nodes and what is wrong.

verify never costs data. It writes nothing where any node finds a signature on the device
(wipefs: a filesystem, a partition table) or has it mounted, checked on every node right before
the writes. Before writing it records the bytes it overwrites (dali/fam.py), so a verify killed
between its writes and putting them back has them put back by the next verify or doit.

Its cost grows linearly with the nodes, and each step runs on all nodes at once: every node
writes its marker, then every node reads all the others' markers in one guest command (a
digest per block), then the blocks are put back. Writer by writer, each followed by N-1 reads,
took 60 s at 8 nodes here and grew with the square of N (bench/scale.py).
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time

from dali import fam, guest
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.fanout import each
from dali.lifecycle import defined, running
from dali.storage import Storage
from dali.text import visible_line
from dali.virt import Libvirt

WRITE_TIMEOUT = 120  # seconds a guest command of verify may take (virt.run's default)


def verify(cluster: Cluster, files: Storage, virt: Libvirt) -> list[dict]:
    """Run the checks, print the table, raise if anything failed. Returns the rows."""
    defined(cluster, virt)
    fam.restore_saved(cluster, files, virt)  # what a verify killed mid-write left overwritten
    doms, down = running(cluster, files, virt)  # a booting node is waited for
    if down:
        raise DaliError(f"{', '.join(down)} not running: run doit start first")
    expected = fam.held(cluster, files)
    mode, device = cluster.device_mode, guest.device_path(cluster.device_mode)
    if expected["mode"] != mode:
        raise DaliError(f"{cluster.fam_path} holds a {expected['mode']} namespace, not the "
                        f"{mode} one device.mode asks for: run doit first")

    def describe(node, dom) -> dict:
        ns = guest.namespace(virt, dom, wait=60)
        row = {"node": node.name, "hostname": guest.hostname(virt, dom),
               "machine-id": guest.machine_id(virt, dom),
               "ipv4": ",".join(guest.ipv4(virt, dom)) or "-",
               "mode": ns.get("mode"), "size": ns.get("size"),
               "namespace": "same" if ns.get("uuid") == expected.get("uuid") else "DIFFERENT",
               "problems": []}
        if row["mode"] != mode or row["size"] != expected["size"]:
            row["problems"].append(f"namespace {row['mode']} {row['size']}, "
                                   f"expected {mode} {expected['size']}")
        if row["namespace"] != "same":
            row["problems"].append("namespace uuid differs from the one in the FAM")
        return row

    rows = each(doms, describe)
    for key in ("hostname", "machine-id", "ipv4"):
        values = [r[key] for r in rows]
        for r in rows:
            if r[key] == "-" or values.count(r[key]) > 1:
                r["problems"].append(f"{key} {r[key]} not unique")

    if cluster.fs.type == "ocfs2":
        _shared_files(cluster, virt, doms, rows)  # the device is mounted: through the filesystem
    else:
        _shared_writes(cluster, files, virt, doms, rows, expected["data_offset"], device)
    _print_table(rows)
    failed = [r for r in rows if r["problems"]]
    if failed:
        # A problem may quote what a node said of itself (its hostname, its namespace).
        raise DaliError(f"verify failed on {', '.join(r['node'] for r in failed)}: " + visible_line(
            "; ".join(f"{r['node']}: {', '.join(r['problems'])}" for r in failed)))
    return rows


def refuse_to_write(virt: Libvirt, doms, device: str) -> None:
    """Raise unless the device is free to write on every node: not mounted, no signature."""
    found = each(doms, lambda n, d: (guest.pmem_mounted(virt, d, device), guest.signatures(virt, d, device)))
    mounted = [n.name for (n, _), (is_mounted, _) in zip(doms, found) if is_mounted]
    if mounted:
        raise DaliError(f"{', '.join(mounted)}: {device} is mounted; verify writes test blocks to "
                        "it (and puts them back): unmount it on every node first")
    signatures = sorted({sig for _, sigs in found for sig in sigs})
    if signatures:
        raise DaliError(f"{device} holds {visible_line(', '.join(signatures))}: verify writes nothing on a "
                        "device with data on it")


def _shared_writes(cluster: Cluster, files: Storage, virt: Libvirt, doms, rows, data_offset: int,
                   device: str) -> None:
    """Each node writes a unique marker at a random block of its own; every other node must read
    it back. The blocks' previous contents are recorded first and put back afterwards: the FAM
    may hold the user's data."""
    size = min(r["size"] for r in rows)
    blocks = dict(zip((n.name for n, _ in doms),
                      random.SystemRandom().sample(range(size // guest.BLOCK), len(doms))))
    markers = {}
    for node, _ in doms:
        marker = f"dali-verify {node.name} {secrets.token_hex(16)}\n".encode()
        markers[node.name] = marker + bytes(guest.BLOCK - len(marker))
    refuse_to_write(virt, doms, device)
    saved = dict(zip(blocks, each(doms, lambda n, d: guest.read_block(virt, d, blocks[n.name], device))))
    # Each write is one guest command of at most WRITE_TIMEOUT seconds, issued in the next few
    # seconds: that long after them, nothing of this verify writes any more.
    fam.save_before_write(cluster, files, {data_offset + blocks[name] * guest.BLOCK: data
                                           for name, data in saved.items()},
                          until=time.time() + 2 * WRITE_TIMEOUT)
    try:
        each(doms, lambda n, d: guest.write_block(virt, d, blocks[n.name], markers[n.name], device))

        def read_the_others(node, dom):
            others = [n.name for n, _ in doms if n is not node]
            if not others:
                return node.name, {}
            digests = guest.block_digests(virt, dom, [blocks[o] for o in others], device)
            return node.name, dict(zip(others, digests))
        seen = dict(each(doms, read_the_others))
    finally:
        each(doms, lambda n, d: guest.write_block(virt, d, blocks[n.name], saved[n.name], device))
        fam.forget_saved(cluster)  # not reached if a block could not be put back: doit does it
    _tally(rows, seen, {w: (data, f"block {blocks[w]}") for w, data in markers.items()}, "marker")


def _shared_files(cluster: Cluster, virt: Libvirt, doms, rows) -> None:
    """Each node writes a file through the mounted filesystem; every other node must read it.
    The files are removed again: verify leaves nothing behind."""
    where = cluster.fs.mountpoint
    by_name = {r["node"]: r for r in rows}
    mounted = each(doms, lambda n, d: virt.run(d, ["mountpoint", "-q", where]).exitcode == 0)
    unmounted = [n.name for (n, _), is_mounted in zip(doms, mounted) if not is_mounted]
    for name in unmounted:
        by_name[name]["problems"].append(f"{where} is not mounted")
    if unmounted:
        return
    paths = {n.name: f"{where}/.dali-verify-{n.name}-{secrets.token_hex(8)}" for n, _ in doms}
    texts = {n.name: f"dali-verify {n.name} {secrets.token_hex(16)}\n" for n, _ in doms}
    try:
        each(doms, lambda n, d: guest.put_file(virt, d, texts[n.name].encode(), paths[n.name], 0o644))

        def read_the_others(node, dom):
            others = [n.name for n, _ in doms if n is not node]
            if not others:
                return node.name, {}
            # sha256sum names each file it could read; one it could not is missing from the output.
            out = virt.run(dom, ["sha256sum", "--", *(paths[o] for o in others)]).stdout
            digests = {path: digest for digest, path in (line.split(maxsplit=1) for line in out.splitlines())}
            return node.name, {o: digests.get(paths[o]) for o in others}
        seen = dict(each(doms, read_the_others))
    finally:
        each(doms, lambda n, d: virt.run(d, ["rm", "-f", paths[n.name]]))
    _tally(rows, seen, {w: (text.encode(), paths[w]) for w, text in texts.items()}, "file")


def _tally(rows, seen: dict[str, dict[str, str]], wrote: dict[str, tuple[bytes, str]], what: str) -> None:
    """Who read what each node wrote. seen[reader][writer] is the sha256 the reader got of what
    the writer wrote; wrote[writer] is (the bytes, where they went)."""
    by_name = {r["node"]: r for r in rows}
    for writer, (data, where) in wrote.items():
        want = hashlib.sha256(data).hexdigest()
        read_by = []
        for reader, digests in seen.items():
            if reader == writer:
                continue
            if digests.get(writer) == want:
                read_by.append(reader)
            else:
                by_name[reader]["problems"].append(f"did not read {writer}'s {what}")
        by_name[writer]["wrote"] = f"{where} -> read by {','.join(read_by) or 'nobody'}"


def _print_table(rows) -> None:
    cols = ["node", "hostname", "ipv4", "machine-id", "mode", "size", "namespace", "wrote", "result"]
    for r in rows:
        r["result"] = "FAIL" if r["problems"] else "ok"
        r.setdefault("wrote", "-")
    cells = [{c: visible_line(str(r[c])) for c in cols} for r in rows]  # what the nodes said of themselves
    widths = {c: max(len(c), *(len(r[c]) for r in cells)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in cells:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
