"""Operations inside a running node, through its guest agent (dali/virt.py): no network needed.

ndctl (list and reconfigure the NVDIMM namespace), 4 KiB block reads and writes on /dev/pmem0,
what the node says about itself (addresses, mounts, uptime), and files put on it.
"""

from __future__ import annotations

import base64
import json
import time

from dali.errors import DaliError
from dali.virt import Libvirt

NAMESPACE = "namespace0.0"
BLOCK = 4096


# --- ndctl ------------------------------------------------------------------------------------

def _json(text: str):
    text = text.strip()
    return json.loads(text) if text else []


def namespace(virt: Libvirt, dom, wait: int = 120) -> dict:
    """namespace0.0 as `ndctl list` reports it. The agent can answer before udev has loaded
    the NVDIMM modules, so an absent namespace is retried for `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        listed = _json(virt.run(dom, ["ndctl", "list"]).check("ndctl list").stdout)
        listed = [listed] if isinstance(listed, dict) else listed
        for ns in listed:
            if ns.get("dev") == NAMESPACE:
                return ns
        if time.monotonic() > deadline:
            raise DaliError(f"{dom.name()}: ndctl list shows no {NAMESPACE} after {wait} s: "
                            f"check the domain's qemu:commandline (-M nvdimm=on, -device nvdimm)")
        time.sleep(2)


def reconfigure_fsdax(virt: Libvirt, dom) -> dict:
    """The seed's step 4: put namespace0.0 in fsdax mode. Returns ndctl's JSON."""
    result = virt.run(dom, ["ndctl", "create-namespace", f"--reconfig={NAMESPACE}",
                            "--mode=fsdax", "--force"], timeout=300)
    result.check("ndctl create-namespace --mode=fsdax")
    return _json(result.stdout)


# --- the shared device, block by block --------------------------------------------------------

def pmem_mounted(virt: Libvirt, dom) -> bool:
    out = virt.run(dom, ["lsblk", "-n", "-o", "MOUNTPOINTS", "/dev/pmem0"]).stdout
    return bool(out.strip())


def signatures(virt: Libvirt, dom) -> list[str]:
    """What wipefs finds on /dev/pmem0 (filesystems, partition tables, RAID...), by type."""
    out = virt.run(dom, ["wipefs", "--no-act", "--noheadings", "--output", "TYPE", "/dev/pmem0"])
    out.check("wipefs --no-act /dev/pmem0")
    return sorted(set(out.stdout.split()))


def read_block(virt: Libvirt, dom, block: int) -> bytes:
    # Read as hex: the agent's output is decoded as text, which would mangle arbitrary bytes.
    r = virt.run(dom, ["sh", "-c", f"dd if=/dev/pmem0 bs={BLOCK} skip={block} count=1 "
                                   "iflag=direct status=none | od -An -v -tx1 | tr -d ' \\n'"])
    r.check("dd read from /dev/pmem0")
    return bytes.fromhex(r.stdout.strip())


def write_block(virt: Libvirt, dom, block: int, data: bytes) -> None:
    virt.run(dom, ["dd", "of=/dev/pmem0", f"bs={BLOCK}", f"seek={block}", "count=1",
                   "oflag=direct", "conv=notrunc", "status=none"], stdin=data).check(
        "dd write to /dev/pmem0")


# --- what the node says about itself ----------------------------------------------------------

def ipv4(virt: Libvirt, dom, wait: int = 90) -> list[str]:
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


def hostname(virt: Libvirt, dom) -> str:
    return virt.agent(dom, "guest-get-host-name")["host-name"]


def machine_id(virt: Libvirt, dom) -> str:
    return virt.run(dom, ["cat", "/etc/machine-id"]).stdout.strip()


# --- files -----------------------------------------------------------------------------------

CHUNK = 1 << 20  # bytes per guest-file-write: well inside the agent's message limit


def put_file(virt: Libvirt, dom, data: bytes, dest: str, mode: int) -> None:
    """Write data to dest in the guest, through the agent: to dest.dali-new first, then renamed,
    so a reader never sees half a file (a module being loaded, a binary being run)."""
    partial = dest + ".dali-new"
    handle = virt.agent(dom, "guest-file-open", path=partial, mode="w")
    try:
        for at in range(0, max(len(data), 1), CHUNK):
            chunk = data[at:at + CHUNK]
            virt.agent(dom, "guest-file-write", timeout=60, handle=handle,
                       **{"buf-b64": base64.b64encode(chunk).decode()})
    finally:
        virt.agent(dom, "guest-file-close", handle=handle)
    virt.run(dom, ["chmod", f"{mode:o}", partial]).check(f"chmod {partial}")
    virt.run(dom, ["mv", "-f", partial, dest]).check(f"mv to {dest}")


def sha256(virt: Libvirt, dom, path: str) -> str:
    return virt.run(dom, ["sha256sum", path], timeout=300).check(f"sha256sum {path}").stdout.split()[0]


def uptime(virt: Libvirt, dom) -> float:
    return float(virt.run(dom, ["cat", "/proc/uptime"], timeout=5).stdout.split()[0])
