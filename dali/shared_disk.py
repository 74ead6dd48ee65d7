"""`doit torture --compare-disk`: a shared virtio disk beside the NVDIMM, to run the same
workloads on both and tell "the shared-memory device" from "the filesystem".

The disk is what a shared-disk cluster gives its nodes: a raw file, sized like the FAM and
allocated like it, attached to every node with <shareable/> and cache='none' (no host page
cache between the nodes). It is prepared the way the NVDIMM is: with fs.type = "ocfs2" the same
mkfs.ocfs2 options, mounted on every node at <fs.mountpoint>-disk; without a filesystem the raw
device, found in each node by its serial (/dev/disk/by-id/virtio-dali-shared-disk).

The file is dali's like everything else, made where the cluster's files live (dali/storage/: a
file here, a volume of the pool on a remote host), whole or not at all, kept across runs, and
removed by `doit clean` (its sweep takes every file of ours). It is attached live only: the
nodes' definitions stay as rendered, and a node booted again gets it back at the next
--compare-disk run.
"""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from dali import ocfs2
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.fanout import each
from dali.render import render
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt

SERIAL = "dali-shared-disk"
DEVICE = f"/dev/disk/by-id/virtio-{SERIAL}"
TARGET = "vdz"  # a name for libvirt; the node finds the disk by its serial


def path(cluster: Cluster) -> Path:
    return cluster.data_dir / "shared-disk.raw"


def mountpoint(cluster: Cluster) -> str:
    return cluster.fs.mountpoint.rstrip("/") + "-disk"


def ensure_file(cluster: Cluster, files: Storage) -> Path:
    disk = path(cluster)
    if files.have(disk):  # (one dali did not make is refused there)
        size = files.size(disk)
        if size != cluster.fam_size:
            raise DaliError(f"{disk}{files.where} is {size} bytes, the FAM {cluster.fam_size}: dali "
                            "never resizes it; doit clean removes it (with the cluster)")
        return disk
    files.allocate(disk, cluster.fam_size, for_qemu=False)  # allocated, as the FAM is
    log(f"created {disk}{files.where}: {cluster.fam_size} bytes, the shared disk for --compare-disk")
    return disk


def disk_xml(disk: Path) -> str:
    return render("shared-disk.xml.j2", path=disk, target=TARGET, serial=SERIAL)


def is_attached(dom: libvirt.virDomain, disk: Path) -> bool:
    live = ET.fromstring(dom.XMLDesc(0))
    return any(s.get("file") == str(disk) for s in live.iterfind("devices/disk/source"))


def attach(virt: Libvirt, dom: libvirt.virDomain, disk: Path) -> None:
    if not is_attached(dom, disk):
        try:
            dom.attachDeviceFlags(disk_xml(disk), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as e:
            raise DaliError(f"{dom.name()}: attaching {disk} failed: {e.get_error_message()}") from None
    # udev names it by its serial a moment after the hot-plug
    virt.run(dom, ["sh", "-c", f"for i in $(seq 100); do [ -b {DEVICE} ] && exit; sleep 0.2; done; exit 1"],
             timeout=60).check(f"waiting for {DEVICE} on {dom.name()}")


def prepare(cluster: Cluster, files: Storage, virt: Libvirt, doms) -> tuple[str, str]:
    """The disk made, attached to every node of the run and prepared as the NVDIMM is; the
    target and its kind for the workloads."""
    disk = ensure_file(cluster, files)
    each(doms, lambda n, d: attach(virt, d, disk))
    if cluster.fs.type == "none":
        return DEVICE, "block"
    first = doms[0][1]
    found = virt.run(first, ["wipefs", "--no-act", "--noheadings", "--output", "TYPE", DEVICE]).stdout.split()
    if "ocfs2" not in found:
        log(f"{first.name()}: mkfs.ocfs2 on the shared disk, as on the NVDIMM")
        virt.run(first, ["mkfs.ocfs2", "-q", "-b", "4K", "-C", "4K", "-L", ocfs2.cluster_name(cluster) + "d",
                         "-N", str(cluster.fs.slots), DEVICE], stdin=b"y\n", timeout=600).check("mkfs.ocfs2")
    where = mountpoint(cluster)
    q = shlex.quote(where)

    def mount(node, dom):
        virt.run(dom, ["sh", "-c", f"mkdir -p {q} && {{ mountpoint -q {q} || "
                                   f"mount -t ocfs2 {DEVICE} {q}; }}"], timeout=600).check(
            f"mounting the shared disk on {where}")
    each(doms, mount)
    return where, "dir"
