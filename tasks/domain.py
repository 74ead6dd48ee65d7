"""Stage: each node's domain XML, rendered, then defined in libvirt.

render:<node> writes state/<tag>/xml/<node>.xml and reruns when a setting the node's XML reads
changes (config_changed over exactly those values), when the template changes, or when the
accel verdict changes (getargs). define:<node> reruns when that file changes or when the domain
is missing from libvirt (someone ran `virsh undefine`); libvirt checks the XML against its
schema before defining it.
"""

from __future__ import annotations

from doit.tools import config_changed

from dali import domain, identity_disk, own_kernel
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.render import template_path
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    # The two groups' own docs (name None: doit's way to document a group of subtasks).
    yield {"basename": "render", "name": None, "doc": "each node's domain XML, rendered"}
    yield {"basename": "define", "name": None, "doc": "each node defined in libvirt"}
    for node in cluster.nodes:
        xml_file = cluster.domain_xml(node)
        yield {
            "basename": "render", "name": node.name,
            "doc": f"{node.name}'s domain XML",
            "actions": [Step(f"render {xml_file}", domain.write, cluster, files, node, changes=cluster)],
            "getargs": {"domain_type": ("accel", "domain_type")},
            "targets": [xml_file],
            "file_dep": [template_path(domain.TEMPLATE)],
            "uptodate": [config_changed(domain.template_values(cluster, files, node))],
            # No clean of its own: the file goes with state/<tag>/ (preflight's clean).
        }
        yield {
            "basename": "define", "name": node.name,
            "doc": f"{node.name} defined in libvirt",
            "actions": [Step(f"define {node.name}", domain.define, cluster, files, virt, node, changes=cluster)],
            # With your own kernel, its files too: a rebuilt kernel makes every definition stale.
            "file_dep": [xml_file] + (own_kernel.built(cluster) if cluster.own_kernel else []),
            "task_dep": ["preflight", "network", "fam", "apparmor", "kernel", "checker", f"disk:{node.name}"]
                        + ([f"identity:{node.name}"] if identity_disk.used(cluster, files) else []),
            "uptodate": [(uptodate(domain.is_defined), [virt, node], {})],
            "clean": [CleanStep(f"shut down and undefine {node.name}", domain.undefine, cluster, virt, node,
                                changes=cluster)],
        }
