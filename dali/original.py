"""The original node's one-off preparation (seed step 4): boot it, put its NVDIMM namespace in
the mode device.mode asks for (fsdax, the seed's; devdax; or raw, as a new FAM is), shut it down
for cloning.

Whether that is still to be done is read from the FAM (dali/fam.py): the fsdax or devdax info
block lives in the FAM itself, so a redefined domain needs no second reconfiguration, a new FAM
does, and a killed run loses nothing that decides it. A FAM that already holds a namespace of
another mode is never reconfigured: that would destroy the shared device's contents.
"""

from __future__ import annotations

from dali import fam, guest, lifecycle, namespaces
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.reporter import log
from dali.storage import Storage
from dali.text import visible_line
from dali.virt import Libvirt


def prepared(cluster: Cluster, files: Storage) -> bool:
    """The FAM holds the namespace device.mode asks for (made by this original, or by hand as
    in the seed). A raw FAM needs no preparation at all."""
    return files.exists(cluster.fam_path) and fam.held(cluster, files)["mode"] == cluster.device_mode


def refuse_a_mode_change(cluster: Cluster, files: Storage) -> None:
    held = fam.held(cluster, files)["mode"]
    if held not in ("raw", cluster.device_mode):
        raise DaliError(f"{cluster.fam_path} holds a {held} namespace, and device.mode = "
                        f"{cluster.device_mode!r} would destroy the shared device's contents: set "
                        f"device.mode back to {held!r}, or, to change it on purpose, move the FAM "
                        "away (its data goes with it) and run doit again")


def _domain(cluster: Cluster, virt: Libvirt):
    dom = virt.domain(cluster.original_node.name)
    if dom is None:
        raise DaliError(f"{cluster.original_node.name} is not defined: run doit")
    return dom


def boot(cluster: Cluster, files: Storage, virt: Libvirt) -> dict:
    """Start the original and wait for its agent. Returns which run of it this is (kept by doit
    as the task's value): original:shutdown powers off that run, and no other."""
    refuse_a_mode_change(cluster, files)
    dom = _domain(cluster, virt)
    virt.start(dom)
    log(f"{dom.name()}: started; waiting for its guest agent (TCG boots take a minute)")
    took = virt.wait_for_agent(dom, cluster.boot_timeout, log, crashed=lifecycle.panic_of(files, virt, dom))
    log(f"{dom.name()}: guest agent answered after {took:.0f} s")
    return {"run": virt.run_of(dom)}


def nothing_to_shut_down(cluster: Cluster, virt: Libvirt, booted: str | None) -> bool:
    """Whether original:shutdown has nothing to do: the original is off, or runs a run other
    than the one original:boot started (`booted`, the value it returned), one the user started
    later and that is theirs."""
    dom = virt.domain(cluster.original_node.name)
    if booted is None or dom is None or not virt.is_running(dom):
        return True
    return virt.run_of(dom) != booted


def reconfigure(cluster: Cluster, files: Storage, virt: Libvirt) -> dict:
    """Put namespace0.0 in device.mode; returns the namespace as the FAM now holds it."""
    refuse_a_mode_change(cluster, files)
    mode = cluster.device_mode
    dom = _domain(cluster, virt)
    ns = guest.namespace(virt, dom)
    log(visible_line(f"{dom.name()}: {guest.NAMESPACE} is in mode {ns.get('mode')}, size {ns.get('size')}"))
    if ns.get("mode") != mode or "size" not in ns:  # (an ndctl cut short: made again)
        log(f"{dom.name()}: ndctl create-namespace --reconfig={guest.NAMESPACE} --mode={mode} --force")
        ns = guest.reconfigure(virt, dom, mode)  # ndctl prints the namespace it made
    on_fam = fam.held(cluster, files)
    if ns.get("mode") != mode or on_fam["mode"] != mode or on_fam.get("uuid") != ns.get("uuid"):
        raise DaliError(visible_line(f"{dom.name()}: {guest.NAMESPACE} is in mode {ns.get('mode')} after "
                                     f"reconfiguring, and the FAM holds a {on_fam['mode']} namespace: see "
                                     "ndctl's output in the guest"))
    device = ns.get("blockdev") or ns.get("chardev") or (ns.get("daxregion", {}).get("devices") or [{}])[0].get("chardev")
    log(visible_line(f"{dom.name()}: {guest.NAMESPACE} {mode}, size {ns.get('size')}, device {device}"))
    namespaces.keep(cluster, files)  # for the next FAM like this one: no boot (dali/namespaces.py)
    return on_fam


def shutdown(cluster: Cluster, virt: Libvirt) -> None:
    """Power the original off for cloning. It has only booted and had its namespace made, and
    its boot is still going on: stopping its services one by one took 6-7 s under TCG, with
    nothing in them to keep. systemd's forced power-off (virt.QUICK) kills its processes,
    unmounts its file systems or remounts them read-only, and powers off: the disk the clones
    are built on is left clean, in about a second. Without an agent, the ACPI button; forced
    after timeouts.shutdown."""
    dom = _domain(cluster, virt)
    how = virt.shutdown(dom, cluster.shutdown_timeout, log, how=Libvirt.QUICK)
    log(f"{dom.name()}: {how}; ready for cloning")
