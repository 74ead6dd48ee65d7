"""A node's libvirt domain: its XML, rendered from templates/domain.xml.j2, and the domain
defined from it (or undefined, by doit clean).

template_values() is everything the template reads except the domain type, which the accel
probe decides; the same values, as plain data, are what makes a node's XML stale
(tasks/domain.py hands them to doit's config_changed), so adding a clone touches no other node.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import libvirt

from dali import cleaning, identity_disk, image, marks, own_kernel
from dali.cluster import Cluster, Node
from dali.coherence import plugin, qemu
from dali.initramfs import MODULES_DISK_SERIAL
from dali.marks import MARK_NS
from dali.render import render, write_if_changed
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt

TEMPLATE = "domain.xml.j2"
KiB = 1024
GiB = 1 << 30


def fam_size_text(size: int) -> str:
    """The seed writes size=1G; keep that spelling where the size allows."""
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def boot_files(cluster: Cluster, files: Storage) -> tuple[Path | None, Path | None, Path | None]:
    """The kernel, initrd and modules disk every node boots: your kernel's (kernel.path), the
    built image's, or none for a user's own disk that boots itself."""
    if cluster.own_kernel:
        return tuple(own_kernel.booted(files))
    if cluster.image.path:
        return None, None, None
    return image.kernel(files), files.image_dir / "initrd.img", None


def template_values(cluster: Cluster, files: Storage, node: Node) -> dict:
    """Everything the template reads but the domain type, as JSON-able values."""
    kernel, initrd, modules_disk = boot_files(cluster, files)
    return {
        "node": node.identity(), "suffix": node.suffix, "tag": cluster.tag,
        "mark": cluster.mark, "mark_ns": MARK_NS,
        "memory_kib": cluster.memory // KiB, "max_memory_kib": cluster.max_memory // KiB,
        "memory_slots": cluster.memory_slots, "vcpus": cluster.vcpus,
        "numa_cpus": "0" if cluster.vcpus == 1 else f"0-{cluster.vcpus - 1}",
        "kernel": str(kernel) if kernel else None,
        "initrd": str(initrd) if initrd else None,
        "modules_disk": str(modules_disk) if modules_disk else None,
        "modules_serial": MODULES_DISK_SERIAL,
        "kernel_args": cluster.kernel_args,
        # virtiofs tags: dalishare0, dalishare1, ... in config order
        "shares": [{"source": src, "target": dst, "tag": f"dalishare{i}"}
                   for i, (src, dst) in enumerate(cluster.shares)],
        "gdb_socket": str(gdb_socket(cluster, node)) if cluster.gdb else None,
        "disk": str(cluster.disk(node)),
        "console_log": str(files.console_log(node)),
        "identity_disk": str(identity_disk.path(cluster, node)) if identity_disk.used(cluster, files) else None,
        "identity_serial": identity_disk.SERIAL, "identity_target": identity_disk.TARGET,
        "network": cluster.network.name,
        "fam": str(cluster.fam_path), "fam_size": fam_size_text(cluster.fam_size),
        "fam_kib": cluster.fam_size // KiB, "style": cluster.device_style,
        **coherence_values(cluster, node),
    }


def coherence_values(cluster: Cluster, node: Node) -> dict:
    """A checked node (device.coherence) runs the backports QEMU with dali's plugin, and its
    NVDIMM sits at an address fixed here, the one the plugin watches (docs/coherence.md)."""
    if cluster.coherence == "off":
        return {"emulator": None, "nvdimm_base": None, "plugin": None}
    base = hex(nvdimm_base(cluster.memory))
    return {"emulator": str(qemu.emulator(cluster.cache_dir)), "nvdimm_base": base,
            "plugin": f"{plugin.path(cluster.cache_dir)},model={cluster.coherence_model},"
                      f"node={cluster.nodes.index(node)},base={base}"}


def nvdimm_base(memory: int) -> int:
    """Where QEMU's PC machine puts the first memory device: the start of its device memory,
    the first GiB boundary after the RAM mapped above 4 GiB (hw/i386/pc.c, pc_piix.c: RAM of
    3.5 GiB or more keeps 3 GiB below 4 GiB). dali pins the NVDIMM there for a checked node, so
    a QEMU that placed it elsewhere fails to start instead of being checked in the wrong place."""
    below = 3 * GiB if memory >= 0xE0000000 else memory
    above = memory - below
    return -(-(4 * GiB + above) // GiB) * GiB


def gdb_socket(cluster: Cluster, node: Node | str) -> Path:
    """Where qemu serves a node's gdb stub (debug.gdb): a unix socket, reachable from the host
    as it is. A TCP port would listen in libvirtd's network namespace, out of the host's reach."""
    return cluster.data_dir / "gdb" / f"{getattr(node, 'name', node)}.sock"


def make_gdb_dir(cluster: Cluster) -> None:
    """qemu (user libvirt-qemu) makes the sockets: the directory is its, and root's."""
    marks.make_dir(cluster.data_dir, cluster)
    directory = gdb_socket(cluster, "x").parent
    marks.make_dir(directory, cluster)
    os.chown(directory, pwd.getpwnam("libvirt-qemu").pw_uid, marks.qemu_gid())


def domain_xml(cluster: Cluster, files: Storage, node: Node, domain_type: str) -> str:
    return render(TEMPLATE, domain_type=domain_type, **template_values(cluster, files, node))


# --- in libvirt -------------------------------------------------------------------------------

def write(cluster: Cluster, files: Storage, node: Node, domain_type: str) -> None:
    write_if_changed(cluster.domain_xml(node), domain_xml(cluster, files, node, domain_type))


def define(cluster: Cluster, files: Storage, virt: Libvirt, node: Node) -> None:
    if cluster.gdb:
        make_gdb_dir(cluster)
    before = virt.domain(node.name)  # raises ForeignObject for a stranger's domain
    # virtlogd makes the console log: where the cluster's files are kept apart from their marks
    # (a remote host's pool), it is written down as ours before it exists, so that clean takes it.
    files.expect(files.console_log(node))
    old = before.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if before else None
    dom = virt.define_domain(cluster.domain_xml(node).read_text())
    if old is None:
        log(f"{node.name}: defined")
    elif dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) != old:
        running = virt.is_running(dom)
        log(f"{node.name}: redefined" + (" (running: the new definition applies at its "
                                          "next boot)" if running else ""))


def is_defined(virt: Libvirt, node: Node) -> bool:
    return virt.domain(node.name) is not None


def undefine(cluster: Cluster, virt: Libvirt, node: Node, dryrun: bool) -> None:
    dom = virt.domain(node.name)
    if dom is None:
        return
    if not dryrun:
        if dom.isActive():
            log(f"{node.name}: shutting down (up to timeouts.shutdown, {cluster.shutdown_timeout} s)")
        log(f"{node.name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}")
        dom.undefine()
    cleaning.said("node", node.name, dryrun)
