"""The running cluster, all nodes or the ones named: start them at once and wait for each guest
agent (one progress line per node), power them off gracefully, or force them off.

A node is named by its suffix (`b`) or its name (`ivpb`); naming some leaves the others exactly
as they were.
"""

from __future__ import annotations

import os
import time

from dali import access, identity_disk, snapshot, storage
from dali.cluster import Cluster, Node
from dali.errors import DaliError
from dali.fanout import each
from dali.reporter import log
from dali.storage import Storage
from dali.text import is_digits
from dali.virt import Libvirt


def batch_size(cluster: Cluster, batch: str) -> int | None:
    """`doit start --batch`: how many nodes boot together; None: all at once (0)."""
    if batch == "auto":
        return auto_batch(cluster)
    if not is_digits(batch):
        raise DaliError(f"--batch {batch}: give a number of nodes (0: all at once) or auto")
    return int(batch) or None


def auto_batch(cluster: Cluster) -> int:
    """One node more than the host has cores for their vCPUs. Booting is CPU-bound (under TCG
    every vCPU is a host thread), so many more nodes than cores only slow each other down (16
    nodes on 2 cores: 626 s all at once, 372 s two at a time, bench/scale.py); but with only
    as many as the cores, the last node of three booted alone on a half-idle host (32 s for
    three where all at once took 18 s). One more than fits keeps every core busy to the end."""
    return max(1, len(os.sched_getaffinity(0)) // cluster.vcpus) + 1


def select(cluster: Cluster, names: list[str] | tuple[str, ...] = ()) -> list[Node]:
    """The nodes named (by suffix or name, in any order), or every node if none is named."""
    if not names:
        return list(cluster.nodes)
    by_name = {n.name: n for n in cluster.nodes} | {n.suffix: n for n in cluster.nodes}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise DaliError(f"no node {', '.join(unknown)} in cluster {cluster.tag}: name nodes by "
                        f"suffix or name, one of {', '.join(n.name for n in cluster.nodes)}")
    chosen = {by_name[name].name for name in names}
    return [n for n in cluster.nodes if n.name in chosen]


def domains(cluster: Cluster, virt: Libvirt, nodes: list[Node]) -> list:
    """The nodes with their domains (None: not defined), as every command on the running
    cluster gets them: with what a killed `doit dump` or `doit snapshot` left paused resumed
    first (dali/pauses.py), since a paused node counts as running, and a rollback a stopped doit
    began finished (dali/snapshot.py), since its nodes are off or paused until it ends."""
    snapshot.converge(cluster, storage.of(cluster, virt), virt)
    return [(n, virt.domain(n.name)) for n in nodes]


def defined(cluster: Cluster, virt: Libvirt, nodes: list[Node] | None = None) -> list:
    doms = domains(cluster, virt, cluster.nodes if nodes is None else nodes)
    missing = [n.name for n, d in doms if d is None]
    if missing:
        raise DaliError(f"{', '.join(missing)} not defined: run doit clone first")
    return doms


def boot(cluster: Cluster, files: Storage, virt: Libvirt, names=(), batch: str = "auto") -> None:
    """Boot the nodes (all, or those named) and return once each is usable: its guest agent
    answers and ssh works. At most `batch` nodes boot at a time, the next one starting as soon
    as one is usable: "auto" is one more than the host has cores for (auto_batch), 0 all at once.
    `doit start` is this and the shared filesystem (dali/startup.py)."""
    size = batch_size(cluster, str(batch))
    doms = defined(cluster, virt, select(cluster, names))
    each(doms, lambda node, dom: _boot(cluster, files, virt, node, dom), at_once=size)


def panic_of(files: Storage, virt: Libvirt, dom):
    """For wait_for_agent: the node's panic, read from its console (dali/evidence.py)."""
    from dali import evidence  # here: a no-op doit loads lifecycle, and need not load this
    return lambda: evidence.panicked(files, virt, dom)


def _boot(cluster: Cluster, files: Storage, virt: Libvirt, node: Node, dom) -> None:
    _keep_a_crash(cluster, files, virt, dom)
    virt.start(dom)
    log(f"started {node.name}; waiting for its guest agent")
    took = virt.wait_for_agent(dom, cluster.boot_timeout, log, crashed=panic_of(files, virt, dom))
    log(f"{node.name}: guest agent answered after {took:.0f} s")
    _wait_until_usable(cluster, virt, node, dom)


# The agent answers early in a boot. A node of dali's image is usable once ssh works
# (dali-identity has put its key and address in place, ssh.socket listens) and its shared device
# is there (/dev/pmem0, or /dev/dax0.0 in devdax mode). The check runs in the node, in the shell:
# the tests of files cost nothing, and systemctl, a program to start under TCG, runs only once
# they pass (dali-identity leaves /run/dali-identity/done when it has finished). A user's own
# image has none of that: usable once systemd says its boot is over.
USABLE = ("[ -e /run/dali-identity/done ] && { [ -e /dev/pmem0 ] || [ -e /dev/dax0.0 ]; } && "
          "systemctl is-active -q dali-identity.service ssh.socket")
BOOTED = "case $(systemctl is-system-running) in running|degraded) true;; *) false;; esac"


def _usable(dom) -> str:
    return USABLE if identity_disk.attached(dom) else BOOTED


def is_usable(cluster: Cluster, virt: Libvirt, dom) -> bool:
    """Whether a running node is past its boot as far as `doit start` waits: asked once, no waiting."""
    return virt.agent_answers(dom) and usable_says_the_node(cluster, virt, dom)


def usable_says_the_node(cluster: Cluster, virt: Libvirt, dom) -> bool:
    """is_usable for a node whose agent is known to answer."""
    return virt.run(dom, ["sh", "-c", _usable(dom)]).exitcode == 0


def _wait_until_usable(cluster: Cluster, virt: Libvirt, node: Node, dom) -> None:
    if not identity_disk.attached(dom):  # a user's own image: its keys are learnt once sshd runs
        access.learn_host_keys(cluster, virt, [(node, dom)], wait=cluster.boot_timeout)
        return
    _wait_in_node(cluster, virt, node, dom, cluster.boot_timeout)


def _wait_in_node(cluster: Cluster, virt: Libvirt, node: Node, dom, wait: int) -> None:
    result = virt.run(dom, ["sh", "-c", f"for i in $(seq {wait * 5}); do {_usable(dom)} && exit 0; "
                            "sleep 0.2; done; exit 1"], timeout=wait + 30)
    if result.exitcode != 0:
        raise DaliError(f"{node.name}: not usable after {wait} s (no ssh, or no /dev/pmem0 or "
                        f"/dev/dax0.0): see its console, /var/log/libvirt/qemu/{node.name}-console.log")


def _boot_left(cluster: Cluster, files: Storage, virt: Libvirt, dom) -> float:
    """Seconds a node that is not usable may still take to boot (timeouts.boot since its qemu
    started); 0 for one that is not booting: a kernel that panicked, or one silent for longer."""
    from dali import evidence  # here: a no-op doit loads lifecycle, and need not load this
    started = virt.started_at(dom)
    left = cluster.boot_timeout - (time.time() - started) if started is not None else 0
    return 0 if left <= 0 or evidence.panicked(files, virt, dom) else left


def running(cluster: Cluster, files: Storage, virt: Libvirt, names=(), wait: bool = True) -> tuple[list, list[str]]:
    """The chosen nodes (all, or those named) that run, as (node, domain), and the names of those
    that do not. Every node returned is usable, as `doit start` leaves it: one still booting
    (started by hand, or coming back from a crash: its agent silent, or answering before its
    device is there) is waited for, up to timeouts.boot from its start, with one line saying
    so. wait=False, a node that panicked, or one silent for longer than a boot: counted among
    those that do not run."""
    chosen = domains(cluster, virt, select(cluster, names))
    up = [(n, d) for n, d in chosen if d is not None and virt.is_running(d)]
    ready = each(up, lambda n, d: is_usable(cluster, virt, d))
    left = {n.name: _boot_left(cluster, files, virt, d) for (n, d), ok in zip(up, ready) if not ok}
    booting = [(n, d) for n, d in up if left.get(n.name, 0) > 0]
    if booting and wait:
        log(f"{', '.join(n.name for n, _ in booting)}: still booting; waiting until usable "
            f"(up to timeouts.boot, {cluster.boot_timeout} s from its start)")
        each(booting, lambda n, d: (virt.wait_for_agent(d, int(left[n.name]) + 1, log,
                                                        crashed=panic_of(files, virt, d)),
                                    _wait_in_node(cluster, virt, n, d, int(left[n.name]) + 1)))
        left = {name: s for name, s in left.items() if name not in {n.name for n, _ in booting}}
    up = [(n, d) for n, d in up if n.name not in left]
    down = [n.name for n, _ in chosen if n.name not in {m.name for m, _ in up}]
    return up, down


def _keep_a_crash(cluster: Cluster, files: Storage, virt: Libvirt, dom) -> None:
    """A node that crashed (libvirt keeps it, stopped, with its memory) or that hangs in a panic
    with a silent agent: its console and memory are kept, then it is powered off, so that it
    can boot again. A node that runs and answers is left alone, whatever its console said."""
    from dali import evidence  # here: a no-op doit loads lifecycle, and need not load this
    if not dom.isActive():
        return
    crashed = not virt.is_running(dom)
    if crashed or not virt.agent_answers(dom):
        if evidence.keep_before_restart(cluster, files, virt, dom):
            log(f"{dom.name()}: had crashed; its evidence is kept in {evidence.crash_dir(cluster)}")


def keep_if_panicked(cluster: Cluster, files: Storage, virt: Libvirt, node: Node, dom) -> None:
    """Before a node is powered off: the evidence of a panic, kept (dali/evidence.py)."""
    from dali import evidence
    why = evidence.panicked(files, virt, dom)
    if why:
        evidence.keep(cluster, files, virt, node.name, why, dom=dom)


def shutdown(cluster: Cluster, files: Storage, virt: Libvirt, names=()) -> None:
    doms = [(n, d) for n, d in domains(cluster, virt, select(cluster, names)) if d]
    for node, dom in doms:
        if dom.isActive():
            keep_if_panicked(cluster, files, virt, node, dom)
    each(doms, lambda node, dom: log(f"{node.name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}"))


def destroy(cluster: Cluster, files: Storage, virt: Libvirt, names=()) -> None:
    """Forced off at once, like pulling the plug (`virsh destroy`): what a crash test wants."""
    for node, dom in domains(cluster, virt, select(cluster, names)):
        if dom is not None and dom.isActive():  # a crashed node too (it keeps its memory)
            keep_if_panicked(cluster, files, virt, node, dom)
            dom.destroy()
            log(f"{node.name}: forced off")
