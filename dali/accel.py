"""Pick the domain type: KVM only where a KVM guest really boots, TCG otherwise.

/dev/kvm existing is not enough: on some hosts (this project's CI among them) KVM opens fine
and even runs real-mode code, but a Linux guest never gets past "Booting from ROM". So `auto`
asks the libvirt host that runs the nodes (this machine's libvirtd, or a server's) whether it
offers KVM at all (its domain capabilities, and vmx or svm in its CPU), then boots the image's
own kernel there under KVM in a transient domain with no disk: a working KVM prints the
kernel's banner within a second or two. The verdict is the `accel` task's value; doit reruns
the probe only when the kernel changes (tasks/accel.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from dali import commands, image
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.marks import MARK_NS
from dali.render import render
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt, unless_gone

PROBE_SECONDS = 10  # a working KVM prints its banner in well under a second


def decide(cluster: Cluster, files: Storage, virt: Libvirt) -> str:
    """'kvm' or 'qemu' (TCG) for <domain type=...>, from the accel setting (auto, kvm, tcg)."""
    where = f"the libvirt host {cluster.uri}"
    if cluster.accel == "tcg":
        return "qemu"
    if cluster.coherence != "off":
        # The plugin runs in TCG only; the settings refuse accel = kvm with it.
        log(f"accel = auto: device.coherence = {cluster.coherence} checks the FAM through TCG; using TCG")
        return "qemu"
    offers = offers_kvm(virt)
    if cluster.accel == "kvm":
        if not offers:
            raise DaliError(f"accel = kvm but {where} offers no KVM (no /dev/kvm, or a CPU without "
                            "vmx or svm): set accel = auto or tcg")
        return "kvm"
    if not offers:
        log(f"accel = auto: {where} offers no KVM (no /dev/kvm, or a CPU without vmx or svm); using TCG")
        return "qemu"
    if cluster.image.path:
        log("accel = auto: no kernel to test KVM with (image.path boots its own disk); using TCG, "
            "set accel = kvm if KVM works there")
        return "qemu"
    log(f"accel = auto: {where} offers KVM; checking that a KVM guest boots there (up to {PROBE_SECONDS} s)")
    if boots(cluster, virt, image.kernel(files), "kvm"):
        return "kvm"
    log(f"accel = auto: a KVM guest does not boot on {where}; using TCG (slower, works)")
    return "qemu"


def offers_kvm(virt: Libvirt) -> bool:
    """libvirt can run a KVM domain there (/dev/kvm, a qemu with KVM), and the host's CPU has
    vmx or svm: without either, no KVM guest can run, whatever /dev/kvm says. A host whose CPU
    libvirt does not describe is left to the probe."""
    try:
        virt.conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError:
        return False
    cpu = ET.fromstring(virt.conn.getCapabilities()).find("host/cpu")
    if cpu is None or cpu.find("feature") is None:
        return True
    return bool({"vmx", "svm"} & {f.get("name") for f in cpu.iterfind("feature")})


def boots(cluster: Cluster, virt: Libvirt, kernel: Path, domain_type: str, seconds: int = PROBE_SECONDS) -> bool:
    """Does `kernel` (a file of the libvirt host) start as a `domain_type` domain within `seconds`?

    A transient domain there, started paused so not a byte of its console is missed, its console
    read through libvirt until the kernel's banner. All of it in a program of its own, with a
    connection of its own (python -m dali.accel): where KVM is broken, resuming the domain can
    hang in libvirtd for good, and a doit waiting on it would hang with it. The program is
    killed once `seconds` (and a margin to start) have passed; its connection closes with it,
    and libvirtd destroys the domain (AUTODESTROY), as it does when a doit is killed."""
    xml = render("accel-probe.xml.j2", domain_type=domain_type, name=f"{cluster.tag}-accel-probe",
                 mark_ns=MARK_NS, mark=cluster.mark, kernel=kernel)
    probe = commands.spawn([sys.executable, "-m", "dali.accel", virt.uri, str(seconds)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    said = ""
    try:
        said, _ = probe.communicate(xml, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        os.killpg(probe.pid, signal.SIGKILL)
        probe.communicate()
    finally:
        commands.finished(probe)
        # libvirtd destroys it as the probe's connection closes, but not while a job of it hangs
        # (a resume, with a KVM that never runs a guest): then it is destroyed from here.
        def destroy_what_is_left() -> None:
            left = virt.domain(f"{cluster.tag}-accel-probe")
            if left is not None:
                left.destroy()
        unless_gone(destroy_what_is_left, default=None)  # (gone as it was looked at: done)
    return said.strip() == "boots"


def _probe(uri: str, xml: str, seconds: float) -> bool:
    """The probe itself, in its own program (boots())."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(uri)
    try:
        dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY)
    except libvirt.libvirtError:
        return False  # refused to start: not a KVM that boots
    # A blocking stream read in a thread of its own: a non-blocking one needs libvirt's event
    # loop, which is not run here (without it, recv() never had data to give).
    stream = conn.newStream(0)
    seen = bytearray()
    banner = threading.Event()

    def read() -> None:
        try:
            while True:
                got = stream.recv(4096)
                if not isinstance(got, bytes) or not got:
                    return  # the console closed: the domain is gone (a panic reboots it, on_reboot destroys it)
                seen.extend(got)
                if b"Linux version" in seen[-8192:]:
                    return
        except libvirt.libvirtError:
            pass
        finally:
            banner.set()  # the banner, or nothing more to come

    try:
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        threading.Thread(target=read, daemon=True).start()
        dom.resume()
        banner.wait(seconds)
    except libvirt.libvirtError:
        pass  # the probe failed to run: not a KVM that boots
    return b"Linux version" in bytes(seen)


if __name__ == "__main__":  # python -m dali.accel URI SECONDS < the probe domain's XML
    booted = _probe(sys.argv[1], sys.stdin.read(), float(sys.argv[2]))
    print("boots" if booted else "silent", flush=True)
    os._exit(0)  # at once: the connection closes, and libvirtd destroys the domain (AUTODESTROY)
