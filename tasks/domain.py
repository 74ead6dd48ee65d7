"""Stage: each node's domain XML, rendered, then defined in libvirt.

render:<node> writes state/<tag>/xml/<node>.xml and reruns when a setting the node's XML reads
changes (config_changed over exactly those values), when the template changes, or when the
accel verdict changes (getargs). define:<node> reruns when that file changes or when the domain
is missing from libvirt (someone ran `virsh undefine`); libvirt checks the XML against its
schema before defining it.
"""

from __future__ import annotations

import libvirt
from doit.tools import config_changed

from dali import cleaning, domain, identity_disk
from dali.cluster import Cluster, Node
from dali.errors import CleanStep, Step, uptodate
from dali.render import template_path, write_if_changed
from dali.reporter import log
from dali.virt import Libvirt


def write(cluster: Cluster, node: Node, domain_type: str) -> None:
    write_if_changed(cluster.domain_xml(node), domain.domain_xml(cluster, node, domain_type))


def define(cluster: Cluster, virt: Libvirt, node: Node) -> None:
    if cluster.gdb:
        domain.make_gdb_dir(cluster)
    before = virt.domain(node.name)  # raises ForeignObject for a stranger's domain
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
        log(f"{node.name}: {virt.shutdown(dom, cluster.shutdown_timeout, log)}")
        dom.undefine()
    cleaning.said("node", node.name, dryrun)


def gen_tasks(cluster: Cluster, virt: Libvirt):
    # The two groups' own docs (name None: doit's way to document a group of subtasks).
    yield {"basename": "render", "name": None, "doc": "each node's domain XML, rendered"}
    yield {"basename": "define", "name": None, "doc": "each node defined in libvirt"}
    for node in cluster.nodes:
        xml_file = cluster.domain_xml(node)
        yield {
            "basename": "render", "name": node.name,
            "doc": f"{node.name}'s domain XML",
            "actions": [Step(f"render {xml_file}", write, cluster, node, changes=cluster)],
            "getargs": {"domain_type": ("accel", "domain_type")},
            "targets": [xml_file],
            "file_dep": [template_path(domain.TEMPLATE)],
            "uptodate": [config_changed(domain.template_values(cluster, node))],
            # No clean of its own: the file goes with state/<tag>/ (preflight's clean).
        }
        yield {
            "basename": "define", "name": node.name,
            "doc": f"{node.name} defined in libvirt",
            "actions": [Step(f"define {node.name}", define, cluster, virt, node, changes=cluster)],
            # With your own kernel, its files too: a rebuilt kernel makes every definition stale.
            "file_dep": [xml_file] + ([cluster.kernel, cluster.initrd, cluster.modules_disk]
                                      if cluster.own_kernel else []),
            "task_dep": ["preflight", "network", "fam", "apparmor", "kernel", f"disk:{node.name}"]
                        + ([f"identity:{node.name}"] if identity_disk.used(cluster) else []),
            "uptodate": [(uptodate(is_defined), [virt, node], {})],
            "clean": [CleanStep(f"shut down and undefine {node.name}", undefine, cluster, virt, node,
                                changes=cluster)],
        }
