"""Operations inside a running node, through its guest agent (dali/virt.py): no network needed.

ndctl (list and reconfigure the NVDIMM namespace), 4 KiB block reads and writes on /dev/pmem0,
what the node says about itself (addresses, mounts, uptime), and files put on it.
"""

from __future__ import annotations

import base64
import json
import time

import libvirt

from dali.errors import DaliError
from dali.virt import Libvirt

NAMESPACE = "namespace0.0"
BLOCK = 4096


# --- ndctl ------------------------------------------------------------------------------------

def _json(text: str):
    text = text.strip()
    return json.loads(text) if text else []


def namespace(virt: Libvirt, dom, wait: int = 120) -> dict:
    """namespace0.0 as `ndctl list` reports it. The agent answers early in the boot, before
    udev has loaded the NVDIMM modules, so an absent namespace, or one whose device (/dev/pmem0
    from nd_pmem, or /dev/dax0.0 in devdax mode) is not there yet, is retried for `wait` seconds."""
    deadline = time.monotonic() + wait
    seen = None
    while True:
        listed = _json(virt.run(dom, ["ndctl", "list"]).check("ndctl list").stdout)
        listed = [listed] if isinstance(listed, dict) else listed
        for ns in listed:
            if ns.get("dev") == NAMESPACE:
                # Settled: its device there and its size known. An ndctl that a killed run
                # started may still be at work in the node (a Ctrl-C stops dali, not the guest's
                # programs): its namespace shows the new mode before it has a size.
                if ("blockdev" in ns or "chardev" in ns) and "size" in ns:
                    return ns
                seen = ns
        if time.monotonic() > deadline:
            if seen:
                return seen
            raise DaliError(f"{dom.name()}: ndctl list shows no {NAMESPACE} after {wait} s: "
                            f"check the domain's qemu:commandline (-M nvdimm=on, -device nvdimm)")
        time.sleep(0.25)  # the drivers load in the first seconds of a boot: asked often


def reconfigure(virt: Libvirt, dom, mode: str) -> dict:
    """The seed's step 4: put namespace0.0 in `mode` (fsdax, devdax). Returns ndctl's JSON."""
    result = virt.run(dom, ["ndctl", "create-namespace", f"--reconfig={NAMESPACE}",
                            f"--mode={mode}", "--force"], timeout=300)
    result.check(f"ndctl create-namespace --mode={mode}")
    return _json(result.stdout)


# --- the shared device, block by block --------------------------------------------------------

def device_path(mode: str) -> str:
    """The shared device as a node sees it, for device.mode."""
    return "/dev/dax0.0" if mode == "devdax" else "/dev/pmem0"


# device-dax has no read(2) or write(2), only mmap of windows aligned to the device's alignment
# (2 MiB by default): a few lines of Python, which the image carries for this.
_DAX_IO = """
import hashlib, mmap, os, sys
dev, n, write, offsets = sys.argv[1], int(sys.argv[2]), sys.argv[3], [int(o) for o in sys.argv[4:]]
window = 2 << 20
fd = os.open(dev, os.O_RDWR if write == "w" else os.O_RDONLY)
prot = mmap.PROT_READ | (mmap.PROT_WRITE if write == "w" else 0)
for off in offsets:
    base = off - off % window
    m = mmap.mmap(fd, window, mmap.MAP_SHARED, prot, offset=base)
    if write == "w":  # no msync: device-dax refuses it (EINVAL), and a store to the mapping is the write
        m[off - base:off - base + n] = sys.stdin.buffer.read(n)
    elif write == "sha256":
        print(hashlib.sha256(m[off - base:off - base + n]).hexdigest())
    else:
        sys.stdout.write(m[off - base:off - base + n].hex())
    m.close()
"""


def pmem_mounted(virt: Libvirt, dom, device: str = "/dev/pmem0") -> bool:
    if device.startswith("/dev/dax"):
        return False  # a character device: nothing mounts it
    out = virt.run(dom, ["lsblk", "-n", "-o", "MOUNTPOINTS", device]).stdout
    return bool(out.strip())


def signatures(virt: Libvirt, dom, device: str = "/dev/pmem0") -> list[str]:
    """What is on the device: wipefs's signatures (filesystems, partition tables, RAID...), by
    type. wipefs cannot read device-dax: there, a non-zero first block (famfs's superblock, say)."""
    if device.startswith("/dev/dax"):
        return ["data in its first block"] if any(read_block(virt, dom, 0, device)) else []
    out = virt.run(dom, ["wipefs", "--no-act", "--noheadings", "--output", "TYPE", device])
    out.check(f"wipefs --no-act {device}")
    return sorted(set(out.stdout.split()))


def read_block(virt: Libvirt, dom, block: int, device: str = "/dev/pmem0") -> bytes:
    if device.startswith("/dev/dax"):
        r = virt.run(dom, ["python3", "-c", _DAX_IO, device, str(BLOCK), "r", str(block * BLOCK)])
    else:
        # As hex: the agent's output is decoded as text, which would mangle arbitrary bytes.
        r = virt.run(dom, ["sh", "-c", f"dd if={device} bs={BLOCK} skip={block} count=1 "
                                       "iflag=direct status=none | od -An -v -tx1 | tr -d ' \\n'"])
    r.check(f"reading block {block} of {device}")
    return bytes.fromhex(r.stdout.strip())


def block_digests(virt: Libvirt, dom, blocks: list[int], device: str = "/dev/pmem0") -> list[str]:
    """The sha256 of each of these blocks as this node reads them, in one guest command (a
    verify of 16 nodes reads 15 blocks on each: a digest each keeps the agent's reply small)."""
    if device.startswith("/dev/dax"):
        r = virt.run(dom, ["python3", "-c", _DAX_IO, device, str(BLOCK), "sha256",
                           *(str(b * BLOCK) for b in blocks)])
    else:
        r = virt.run(dom, ["sh", "-c", f'for b; do dd if={device} bs={BLOCK} skip=$b count=1 '
                                       'iflag=direct status=none | sha256sum || exit; done',
                           "sh", *map(str, blocks)])
    r.check(f"reading blocks {', '.join(map(str, blocks))} of {device}")
    return [line.split()[0] for line in r.stdout.splitlines()]


def write_block(virt: Libvirt, dom, block: int, data: bytes, device: str = "/dev/pmem0") -> None:
    if device.startswith("/dev/dax"):
        argv = ["python3", "-c", _DAX_IO, device, str(BLOCK), "w", str(block * BLOCK)]
    else:
        argv = ["dd", f"of={device}", f"bs={BLOCK}", f"seek={block}", "count=1", "oflag=direct",
                "conv=notrunc", "status=none"]
    virt.run(dom, argv, stdin=data).check(f"writing block {block} of {device}")


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

# Bytes per guest-file-write. Measured: 128 KiB (175 KB of base64) goes through, 192 KiB makes
# qemu-ga misread the message, 256 KiB hangs the agent until libvirt gives up on it.
CHUNK = 96 << 10


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
    except Exception:
        try:  # the write's error is the one to report, not a close after it
            virt.agent(dom, "guest-file-close", handle=handle)
        except libvirt.libvirtError:
            pass
        raise
    virt.agent(dom, "guest-file-close", handle=handle)
    virt.run(dom, ["chmod", f"{mode:o}", partial]).check(f"chmod {partial}")
    virt.run(dom, ["mv", "-f", partial, dest]).check(f"mv to {dest}")


def sha256(virt: Libvirt, dom, path: str) -> str:
    return virt.run(dom, ["sha256sum", path], timeout=300).check(f"sha256sum {path}").stdout.split()[0]

