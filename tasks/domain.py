"""Stages 5-6: each node's domain XML, rendered from templates/domain.xml.j2, then defined.

`render:<node>` writes state/<tag>/xml/<node>.xml and reruns only when a setting the node reads
changes (config_changed over exactly those values) or the template changes. `define:<node>`
reruns when that file changes or when the domain is missing from libvirt (someone ran
`virsh undefine`); libvirt checks the XML against its schema before defining it.
"""

from __future__ import annotations

from pathlib import Path

import libvirt
from doit.tools import config_changed

from tasks import accel, errors
from tasks.config import Cluster, Node
from tasks.render import render, template_path, write_if_changed
from tasks.reporter import log
from tasks.virt import MARK_NS, Libvirt

TEMPLATE = "domain.xml.j2"
KiB = 1024


def fam_size_text(size: int) -> str:
    """The seed writes size=1G; keep that spelling where the size allows."""
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def boot_files(cluster: Cluster) -> dict:
    """Direct kernel boot from the built image, or None/None to boot a user's disk."""
    if cluster.image.path:
        return {"kernel": None, "initrd": None}
    return {"kernel": str(cluster.image_dir / "vmlinuz"),
            "initrd": str(cluster.image_dir / "initrd.img")}


def template_values(cluster: Cluster, node: Node) -> dict:
    """Everything the template reads, but the domain type (decided when rendering)."""
    return {
        "node": node, "tag": cluster.tag, "mark_ns": MARK_NS,
        "memory_kib": cluster.memory // KiB, "max_memory_kib": cluster.max_memory // KiB,
        "memory_slots": cluster.memory_slots, "vcpus": cluster.vcpus,
        "numa_cpus": "0" if cluster.vcpus == 1 else f"0-{cluster.vcpus - 1}",
        "boot": boot_files(cluster), "disk": str(cluster.disk(node)),
        "network": cluster.network.name,
        "fam": str(cluster.fam_path), "fam_size": fam_size_text(cluster.fam_size),
    }


def domain_xml(cluster: Cluster, node: Node, domain_type: str) -> str:
    return render(TEMPLATE, domain_type=domain_type, **template_values(cluster, node))


def _settings_key(cluster: Cluster, node: Node) -> str:
    values = template_values(cluster, node)
    values["node"] = (node.name, node.uuid, node.mac, node.machine_id, node.is_original)
    values["accel"] = cluster.accel
    return repr(sorted(values.items()))


def render_tasks(cluster: Cluster, needs_image: list[str]):
    for node in cluster.nodes:
        target = cluster.domain_xml(node)

        def write(node=node, target=target):
            kernel = boot_files(cluster)["kernel"]
            dtype = accel.domain_type(cluster, Path(kernel) if kernel else None)
            write_if_changed(target, domain_xml(cluster, node, dtype))

        yield {
            "name": node.name,
            "actions": [errors.action(write)],
            "targets": [target],
            "file_dep": [template_path(TEMPLATE)],
            "task_dep": needs_image,  # accel=auto boots the image's kernel once under KVM
            "uptodate": [config_changed(_settings_key(cluster, node))],
            "clean": True,  # remove the rendered file
            "verbosity": 2,
        }


def define_tasks(cluster: Cluster, virt: Libvirt):
    for node in cluster.nodes:
        xml_file = cluster.domain_xml(node)

        @errors.uptodate
        def defined(node=node):
            return virt.domain(node.name) is not None

        def define(node=node, xml_file=xml_file):
            before = virt.domain(node.name)  # raises ForeignObject for a stranger's domain
            old = before.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if before else None
            dom = virt.define_domain(xml_file.read_text())
            if old is None:
                log(f"{node.name}: defined")
            elif dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) != old:
                running = virt.is_running(dom)
                log(f"{node.name}: redefined" + (" (running: the new definition applies at its "
                                                  "next boot)" if running else ""))

        def undefine(node=node):
            dom = virt.domain(node.name)
            if dom is None:
                return
            how = virt.shutdown(dom, cluster.shutdown_timeout, log)
            dom.undefine()
            log(f"{node.name}: {how}, undefined")

        yield {
            "name": node.name,
            "actions": [errors.action(define)],
            "file_dep": [xml_file],
            "task_dep": ["preflight", "network", "fam", "apparmor", f"disk:{node.name}"],
            "uptodate": [defined],
            "clean": [errors.action(undefine)],
            "verbosity": 2,
        }
