"""Stage: KVM or TCG, decided once per kernel (dali/accel.py probes it).

Its value, {"domain_type": "kvm" | "qemu"}, reaches the render tasks through doit's getargs,
which also makes them rerun when the verdict changes. The kernel is a file_dep: a new kernel
is probed again, an unchanged one never.
"""

from __future__ import annotations

from doit.tools import config_changed

from dali import accel
from dali.cluster import Cluster
from dali.errors import Step
from dali.virt import Libvirt


def decide(cluster: Cluster) -> dict:
    return {"domain_type": accel.domain_type(cluster.accel, cluster.image_kernel)}


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "accel",
        "doc": "KVM or TCG: does a KVM guest really boot here?",
        "actions": [Step("decide between KVM and TCG", decide, cluster, changes=cluster)],
        "file_dep": [cluster.image_kernel] if cluster.image_kernel else [],
        "task_dep": ["image"],
        "uptodate": [config_changed({"accel": cluster.accel})],
    }
