"""`doit start`, `doit shutdown`, `doit verify`: the running cluster.

start boots every node at once and waits for each guest agent (one progress line per node);
shutdown powers them off gracefully; verify is the cluster's self-test of the shared device.
"""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from tasks import errors, ndctl
from tasks.config import Cluster
from tasks.errors import DaliError
from tasks.original import ndctl_record
from tasks.reporter import log
from tasks.virt import Libvirt

BLOCK = 4096


def _defined(cluster: Cluster, virt: Libvirt) -> list:
    doms = [(n, virt.domain(n.name)) for n in cluster.nodes]
    missing = [n.name for n, d in doms if d is None]
    if missing:
        raise DaliError(f"{', '.join(missing)} not defined: run doit clone first")
    return doms


def _each(doms, fn) -> list:
    """fn(node, dom) on every node at once; the first error is raised after all have ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(doms))) as pool:
        futures = [pool.submit(fn, n, d) for n, d in doms]
    results, failures = [], []
    for f in futures:
        try:
            results.append(f.result())
        except DaliError as e:
            failures.append(str(e))
    if failures:
        raise DaliError("; ".join(failures))
    return results


def start(cluster: Cluster, virt: Libvirt) -> None:
    doms = _defined(cluster, virt)
    for _, dom in doms:
        virt.start(dom)
    log(f"started {', '.join(d.name() for _, d in doms)}; waiting for their guest agents")

    def wait(node, dom):
        took = virt.wait_for_agent(dom, cluster.boot_timeout, log)
        log(f"{node.name}: guest agent answered after {took:.0f} s")

    _each(doms, wait)


def shutdown(cluster: Cluster, virt: Libvirt) -> None:
    doms = [(n, d) for n, d in ((n, virt.domain(n.name)) for n in cluster.nodes) if d]
    _each(doms, lambda node, dom: log(f"{node.name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}"))


# --- verify ---------------------------------------------------------------------------------

def _ipv4(virt: Libvirt, dom, wait: int = 90) -> list[str]:
    """The node's IPv4 addresses; DHCP may finish a while after the agent first answers."""
    deadline = time.monotonic() + wait
    while True:
        addrs = []
        for iface in virt.agent(dom, "guest-network-get-interfaces"):
            if iface.get("name") != "lo":
                addrs += [a["ip-address"] for a in iface.get("ip-addresses", [])
                          if a.get("ip-address-type") == "ipv4"]
        if addrs or time.monotonic() > deadline:
            return addrs
        time.sleep(2)


def _pmem_mounted(virt: Libvirt, dom) -> bool:
    out = virt.run(dom, ["lsblk", "-n", "-o", "MOUNTPOINTS", "/dev/pmem0"]).stdout
    return bool(out.strip())


def _read_block(virt: Libvirt, dom, block: int) -> bytes:
    # Read as hex: the adapter decodes output as text, which would mangle arbitrary bytes.
    r = virt.run(dom, ["sh", "-c", f"dd if=/dev/pmem0 bs={BLOCK} skip={block} count=1 "
                                   "iflag=direct status=none | od -An -v -tx1 | tr -d ' \\n'"])
    r.check("dd read from /dev/pmem0")
    return bytes.fromhex(r.stdout.strip())


def _write_block(virt: Libvirt, dom, block: int, data: bytes) -> None:
    virt.run(dom, ["dd", "of=/dev/pmem0", f"bs={BLOCK}", f"seek={block}", "count=1",
                   "oflag=direct", "conv=notrunc", "status=none"], stdin=data).check(
        "dd write to /dev/pmem0")


def verify(cluster: Cluster, virt: Libvirt) -> list[dict]:
    """Run the checks, print the table, raise if anything failed. Returns the rows (tests)."""
    doms = _defined(cluster, virt)
    down = [n.name for n, d in doms if not virt.is_running(d) or not virt.agent_answers(d)]
    if down:
        raise DaliError(f"{', '.join(down)} not running or not answering: run doit start first")
    try:
        expected = json.loads(ndctl_record(cluster).read_text())
    except (OSError, ValueError):
        raise DaliError("no record of the original's fsdax namespace: run doit first")

    rows = []
    for node, dom in doms:
        ns = ndctl.namespace(virt, dom, wait=60)
        row = {"node": node.name,
               "hostname": virt.agent(dom, "guest-get-host-name")["host-name"],
               "machine-id": virt.run(dom, ["cat", "/etc/machine-id"]).stdout.strip(),
               "ipv4": ",".join(_ipv4(virt, dom)) or "-",
               "mode": ns.get("mode"), "size": ns.get("size"),
               # Same uuid as the original recorded: this node sees the namespace the original
               # made, through the FAM; reconfiguring would have given it a new one.
               "namespace": "same" if ns.get("uuid") == expected.get("uuid") else "DIFFERENT",
               "problems": []}
        if row["mode"] != "fsdax" or row["size"] != expected["size"]:
            row["problems"].append(f"namespace {row['mode']} {row['size']}, "
                                   f"expected fsdax {expected['size']}")
        if row["namespace"] != "same":
            row["problems"].append("namespace uuid differs from the original's")
        if _pmem_mounted(virt, dom):
            raise DaliError(f"{node.name}: /dev/pmem0 is mounted; verify writes test blocks to "
                            "it (and puts them back): unmount it on every node first")
        rows.append(row)
    for key in ("hostname", "machine-id", "ipv4"):
        values = [r[key] for r in rows]
        for r in rows:
            if r[key] == "-" or values.count(r[key]) > 1:
                r["problems"].append(f"{key} {r[key]} not unique")

    _shared_writes(cluster, virt, doms, rows)
    _print_table(rows)
    failed = [r["node"] for r in rows if r["problems"]]
    if failed:
        raise DaliError(f"verify failed on {', '.join(failed)}: " +
                        "; ".join(f"{r['node']}: {', '.join(r['problems'])}" for r in rows if r["problems"]))
    return rows


def _shared_writes(cluster, virt, doms, rows) -> None:
    """Each node writes a unique marker at a random block; every other node must read it back.
    The block's previous contents are restored afterwards: the FAM may hold the user's data."""
    size = min(r["size"] for r in rows)
    by_name = {r["node"]: r for r in rows}
    for node, dom in doms:
        block = secrets.randbelow(size // BLOCK)
        marker = f"dali-verify {node.name} {secrets.token_hex(16)}\n".encode()
        data = marker + bytes(BLOCK - len(marker))
        saved = _read_block(virt, dom, block)
        _write_block(virt, dom, block, data)
        seen_by = []
        try:
            for other, odom in doms:
                if other is node:
                    continue
                if _read_block(virt, odom, block) == data:
                    seen_by.append(other.name)
                else:
                    by_name[other.name]["problems"].append(f"did not read {node.name}'s marker")
        finally:
            _write_block(virt, dom, block, saved)
        by_name[node.name]["wrote"] = f"block {block} -> read by {','.join(seen_by) or 'nobody'}"


def _print_table(rows) -> None:
    cols = ["node", "hostname", "ipv4", "machine-id", "mode", "size", "namespace", "wrote", "result"]
    for r in rows:
        r["result"] = "FAIL" if r["problems"] else "ok"
        r.setdefault("wrote", "-")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


def tasks(cluster: Cluster, virt: Libvirt):
    """Commands rather than build steps: they run every time they are asked for."""
    yield {"basename": "start", "actions": [errors.action(lambda: start(cluster, virt))],
           "task_dep": ["clone"], "uptodate": [False], "verbosity": 2,
           "doc": "boot every node at once; wait until each guest agent answers"}
    yield {"basename": "shutdown", "actions": [errors.action(lambda: shutdown(cluster, virt))],
           "uptodate": [False], "verbosity": 2,
           "doc": "power every node off gracefully (forced after timeouts.shutdown)"}
    yield {"basename": "verify", "actions": [errors.action(lambda: verify(cluster, virt))],
           "uptodate": [False], "verbosity": 2,
           "doc": "self-test on running nodes: fsdax everywhere, shared writes, unique identities"}
