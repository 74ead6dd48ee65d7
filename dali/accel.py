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
