"""Pick the domain type: KVM only where a KVM guest really boots, TCG otherwise.

/dev/kvm existing is not enough: on some hosts (this project's CI among them) KVM opens fine
and even runs real-mode code, but a Linux guest never gets past "Booting from ROM". So `auto`
boots the guest's own kernel under KVM, with no root disk: a working KVM prints the kernel's
banner within a second or two. The verdict is the `accel` task's value; doit reruns the probe
only when the kernel changes (tasks/accel.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dali.errors import DaliError
from dali.reporter import log

PROBE_SECONDS = 10  # a working KVM prints its banner in well under a second


def guest_boots(kernel: Path, accelerator: str = "kvm", seconds: int = PROBE_SECONDS) -> bool:
    """Does `kernel` start under `accelerator` within `seconds`? (It prints its banner.)"""
    cmd = ["qemu-system-x86_64", "-accel", accelerator, "-nodefaults", "-no-user-config",
           "-display", "none", "-m", "256", "-no-reboot", "-serial", "stdio",
           "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=seconds).stdout
    except subprocess.TimeoutExpired:
        return False
    return b"Linux version" in out


def cpu_has_virtualisation(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """vmx (Intel) or svm (AMD): without either, no KVM guest can run, whatever /dev/kvm says."""
    try:
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return True  # unknown: let the probe decide
    return bool({"vmx", "svm"} & set(flags.split()))


def domain_type(accel: str, kernel: Path | None) -> str:
    """'kvm' or 'qemu' (TCG) for <domain type=...>, from the accel setting (auto, kvm, tcg)."""
    has_kvm = os.path.exists("/dev/kvm")
    if accel == "tcg":
        return "qemu"
    if accel == "kvm":
        if not has_kvm:
            raise DaliError("accel = kvm but this host has no /dev/kvm: set accel = auto or tcg")
        return "kvm"
    if not has_kvm:
        return "qemu"
    if not cpu_has_virtualisation():
        log("accel = auto: /dev/kvm exists but the CPU has neither vmx nor svm; using TCG")
        return "qemu"
    if kernel is None:
        log("accel = auto: no kernel to test KVM with (image.path boots its own disk); using TCG, "
            "set accel = kvm if KVM works here")
        return "qemu"
    log(f"accel = auto: /dev/kvm exists; checking that a KVM guest boots (up to {PROBE_SECONDS} s)")
    if guest_boots(kernel, "kvm"):
        return "kvm"
    log("accel = auto: a KVM guest does not boot on this host; using TCG (slower, works)")
    return "qemu"


# --- where the nodes run on another host ------------------------------------------------------

def remote_domain_type(cluster, virt) -> str:
    """The same decision, made on the libvirt host that runs the nodes (a server with KVM,
    driven from a laptop without): libvirt says whether that host offers KVM at all, and a
    probe domain there boots the image's kernel, uploaded to the cluster's pool."""
    where = cluster.uri
    if cluster.accel == "tcg":
        return "qemu"
    offers = _offers_kvm(virt)
    if cluster.accel == "kvm":
        if not offers:
            raise DaliError(f"accel = kvm but the libvirt host {where} offers no KVM: set accel = auto or tcg")
        return "kvm"
    if not offers:
        log(f"accel = auto: the libvirt host {where} offers no KVM; using TCG")
        return "qemu"
    log(f"accel = auto: {where} offers KVM; checking that a KVM guest boots there (up to {PROBE_SECONDS} s)")
    if _boots_there(cluster, virt):
        return "kvm"
    log(f"accel = auto: a KVM guest does not boot on {where}; using TCG (slower, works)")
    return "qemu"


def _offers_kvm(virt) -> bool:
    import libvirt
    try:
        virt.conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        return True
    except libvirt.libvirtError:
        return False


def _boots_there(cluster, virt, seconds: int = PROBE_SECONDS) -> bool:
    """Boot the image's kernel under KVM in a transient domain on the libvirt host, started
    paused so not a byte of its console is missed, and read that console through libvirt.
    The domain is AUTODESTROY: it dies with this connection, so a killed doit leaves none."""
    import time

    import libvirt

    from dali.marks import MARK_NS
    mark = " ".join(f'{k}="{v}"' for k, v in cluster.mark.items())
    xml = (f"<domain type='kvm'><name>{cluster.tag}-accel-probe</name>"
           f"<metadata><dali:cluster xmlns:dali='{MARK_NS}' {mark}/></metadata>"
           "<memory unit='MiB'>256</memory><vcpu>1</vcpu>"
           f"<os><type arch='x86_64'>hvm</type><kernel>{cluster.image_kernel}</kernel>"
           "<cmdline>console=ttyS0 panic=-1</cmdline></os><on_reboot>destroy</on_reboot>"
           "<devices><serial type='pty'/><console type='pty'/></devices></domain>")
    dom = virt.conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY)
    stream = virt.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    seen = b""
    try:
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        dom.resume()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and b"Linux version" not in seen:
            got = stream.recv(4096)
            if got == -2:  # nothing yet
                time.sleep(0.1)
            elif not got:  # the domain is gone (a panic reboots it, on_reboot destroys it)
                break
            else:
                seen = (seen + got)[-8192:]
    except libvirt.libvirtError:
        pass  # the probe failed to run: not a KVM that boots
    finally:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass
    return b"Linux version" in seen
