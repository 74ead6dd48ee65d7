"""Pick the domain type: KVM only where a KVM guest really boots, TCG otherwise.

/dev/kvm existing is not enough: on some hosts (this project's CI among them) KVM opens fine
and even runs real-mode code, but a Linux guest never gets past "Booting from ROM". So `auto`
boots the guest's own kernel under KVM, with no root disk: a working KVM reaches the kernel's
"VFS: Unable to mount root" panic in a second or two and qemu exits (panic=-1, -no-reboot).
The verdict is kept in state/<tag>/accel.json per kernel, so the probe runs once.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tasks.config import Cluster
from tasks.errors import DaliError
from tasks.reporter import log

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
        flags = next(l for l in cpuinfo.read_text().splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        return True  # unknown: let the probe decide
    return bool({"vmx", "svm"} & set(flags.split()))


def domain_type(cluster: Cluster, kernel: Path | None) -> str:
    """'kvm' or 'qemu' (TCG) for <domain type=...>."""
    has_kvm = os.path.exists("/dev/kvm")
    if cluster.accel == "tcg":
        return "qemu"
    if cluster.accel == "kvm":
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
    record = cluster.state_dir / "accel.json"
    key = {"kernel": str(kernel), "size": kernel.stat().st_size, "mtime": kernel.stat().st_mtime}
    try:
        saved = json.loads(record.read_text())
        if saved["key"] == key:
            return saved["type"]
    except (OSError, ValueError, KeyError):
        pass
    log(f"accel = auto: /dev/kvm exists; checking that a KVM guest boots (up to {PROBE_SECONDS} s)")
    chosen = "kvm" if guest_boots(kernel, "kvm") else "qemu"
    if chosen == "qemu":
        log("accel = auto: a KVM guest does not boot on this host; using TCG (slower, works)")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": key, "type": chosen}))
    return chosen
