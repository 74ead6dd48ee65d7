"""A node's crash, kept before anything restarts it: its console log and its memory.

A node whose kernel panics, oopses, hits a BUG, locks up or fences itself is found two ways:
libvirt marks the domain crashed (the pvpanic device tells it, and on_crash=preserve keeps qemu
and the guest's memory as they were: templates/domain.xml.j2), and its serial console shows
the kernel's report (dali/consoles.py), which also catches what pvpanic does not (a soft
lockup, a hung task, a BUG the kernel survives).

Before `doit start` or `doit restart` boots such a node again, and when `doit torture` sees one,
dali keeps state/<tag>/crash/<node>-<time>/:
    console.log    the node's console since its qemu started
    memory.kdump   `virsh dump --memory-only --format kdump-zlib`: what `crash vmlinux memory.kdump`
                   reads (qemu 7.2 writes makedumpfile's flattened form, which crash takes as
                   it is; `crash --osrelease memory.kdump` names the kernel). Zero pages are left out, so the NVDIMM's empty gigabyte costs nothing:
                   76 MB and 3 s here, where the ELF format wrote 2 GiB in 10 s
    README         what happened, and the vmlinux to give crash (kernel.path's tree)
Once per boot of the node: its libvirt domain id names the boot.

`doit dump` takes the memory of every running node at the same moment: all paused, dumped one
after the other, resumed together (however the run ends: dali/pauses.py), for a distributed
deadlock where no node panics. Each dump in a directory of its own,
state/<tag>/dumps/<time>[-N] (N for a second dump in the same second).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import libvirt

from dali import consoles, pauses
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.storage import Storage
from dali.text import visible_line
from dali.virt import Libvirt


def crash_dir(cluster: Cluster) -> Path:
    return cluster.state_dir / "crash"


def panicked(files: Storage, virt: Libvirt, dom: libvirt.virDomain) -> str | None:
    """Why this node is down or unusable: libvirt's crashed state, or the first fatal report
    on its console since its qemu started. None for a healthy node (or one that is off)."""
    try:
        state, reason = dom.state()
    except libvirt.libvirtError:
        return None
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return None
    fatal = consoles.fatal(consoles.findings(consoles.since(files, dom.name(), 0)))
    if fatal and {kind for kind, _ in fatal} == {"fenced"} and virt.agent_answers(dom):
        fatal = []  # OCFS2 restarted it on purpose, and it is back: a fact for the run's report
    if fatal:
        return f"{fatal[0][0]}: {fatal[0][1]}"
    if state == libvirt.VIR_DOMAIN_CRASHED or (
            state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_CRASHED):
        return "crashed (pvpanic): its console shows no report"
    return None


def _boot_id(virt: Libvirt, dom: libvirt.virDomain) -> str:
    """This run of the node's qemu: libvirt's domain id, and the run as dali tells it from the
    next (ids start again when libvirtd does)."""
    return f"domain id {dom.ID()}, run {virt.run_of(dom) or '?'}"


def _already_kept(cluster: Cluster, name: str, boot: str) -> Path | None:
    """Where this boot's crash of `name` was kept: the cluster's crash/ or a torture run's."""
    runs = cluster.state_dir / "runs"
    places = [crash_dir(cluster), *runs.glob("*/crash"), *runs.glob("*/*/crash")]
    for d in sorted(d for place in places for d in place.glob(f"{name}-*")):
        readme = d / "README"
        if readme.exists() and f"boot: {boot}\n" in readme.read_text():
            return d
    return None


def _vmlinux_line(cluster: Cluster) -> str:
    if cluster.own_kernel:
        tree = cluster.own_kernel.bzimage.parents[3]  # arch/x86/boot/bzImage -> the source tree
        return (f"vmlinux: {tree / 'vmlinux'} (kernel.path's tree, built with CONFIG_DEBUG_INFO "
                "for crash to read it)")
    return ("vmlinux: the image's Debian kernel: its debug symbols are in Debian's "
            "linux-image-<version>-dbg package (/usr/lib/debug/boot/vmlinux-<version>)")


def keep(cluster: Cluster, files: Storage, virt: Libvirt, name: str, reason: str,
         dom: libvirt.virDomain | None = None, under: Path | None = None) -> Path | None:
    """Keep the evidence of `name`'s crash, once per boot, in state/<tag>/crash/ or, found by
    a torture run, under that run (`under`/crash/): the directory, or None when the node is
    gone (nothing of its memory is left to keep, its console is in the run's report)."""
    if dom is None:
        dom = virt.domain(name)
    if dom is None or not dom.isActive():
        return None
    boot = _boot_id(virt, dom)
    found = _already_kept(cluster, name, boot)
    if found is not None:
        return found
    place = under / "crash" if under is not None else crash_dir(cluster)
    where = place / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    where.mkdir(parents=True, mode=0o700)
    place.chmod(0o700)
    (where / "console.log").write_bytes(consoles.since(files, name, 0))
    lines = [f"node: {name}", f"boot: {boot}", f"found: {reason}",
             f"kept: {time.strftime('%Y-%m-%d %H:%M:%S')}", _vmlinux_line(cluster)]
    try:
        log(f"{name}: {visible_line(reason)}; keeping its memory and console in {where}")
        files.dump_memory(dom, where / "memory.kdump")
        lines.append("memory: memory.kdump (read it with: crash vmlinux memory.kdump)")
    except libvirt.libvirtError as e:
        lines.append(f"memory: not dumped: {e.get_error_message()}")
    (where / "README").write_text("\n".join(lines) + "\n")
    return where


def keep_before_restart(cluster: Cluster, files: Storage, virt: Libvirt, dom: libvirt.virDomain) -> bool:
    """Before a node is booted again: keep its evidence if it crashed, and power the crashed
    domain off (libvirt keeps it, paused, for exactly this). True if it had crashed."""
    why = panicked(files, virt, dom)
    if why is None:
        return False
    keep(cluster, files, virt, dom.name(), why, dom=dom)
    if dom.isActive():
        dom.destroy()
    return True


def _new_dump_dir(cluster: Cluster) -> Path:
    """state/<tag>/dumps/<time>, or <time>-2, -3, ... for more dumps in the same second."""
    dumps = cluster.state_dir / "dumps"
    dumps.mkdir(parents=True, mode=0o700, exist_ok=True)
    dumps.chmod(0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        where = dumps / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            where.mkdir(mode=0o700)
            return where
        except FileExistsError:
            continue


def dump_all(cluster: Cluster, files: Storage, virt: Libvirt, doms) -> Path:
    """Every node's memory at the same moment: pause all, dump each, resume all (however the
    run ends: dali/pauses.py)."""
    running = [(n, d) for n, d in doms if d.isActive()]
    if not running:
        raise DaliError("no node is running: doit start first")
    where = _new_dump_dir(cluster)
    with pauses.paused_together(cluster, virt, [d for _, d in running]) as paused:
        moment = time.strftime("%Y-%m-%d %H:%M:%S")
        log(f"paused {', '.join(d.name() for d in paused)} at {moment}; dumping their memory")
        for node, dom in running:
            t = time.monotonic()
            files.dump_memory(dom, where / f"{node.name}.kdump")
            log(f"{node.name}: {where / (node.name + '.kdump')} in {time.monotonic() - t:.1f} s")
    (where / "README").write_text(
        f"nodes: {', '.join(n.name for n, _ in running)}\npaused together at: {moment}\n"
        f"{_vmlinux_line(cluster)}\nread one with: crash vmlinux <node>.kdump\n")
    log(f"resumed {', '.join(d.name() for d in paused)}: the dumps are in {where}")
    return where
