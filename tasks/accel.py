"""Stage: KVM or TCG, decided once per kernel (dali/accel.py probes it).

Its value, {"domain_type": "kvm" | "qemu"}, reaches the render tasks through doit's getargs,
which also makes them rerun when the verdict changes. The kernel is a file_dep: a new kernel
is probed again, an unchanged one never.
"""

from __future__ import annotations

from doit.tools import config_changed

from dali import accel, image
from dali.cluster import Cluster
from dali.steps import Step
from dali.virt import Libvirt


def decide(cluster: Cluster, virt: Libvirt) -> dict:
    if cluster.remote:
        return {"domain_type": accel.remote_domain_type(cluster, virt)}
    return {"domain_type": accel.domain_type(cluster.accel, cluster.image_kernel)}


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "accel",
        "doc": "KVM or TCG: does a KVM guest really boot here?",
        "actions": [Step("decide between KVM and TCG", decide, cluster, virt, changes=cluster)],
        # On a remote host the kernel is a volume there: the image's stamp stands for it.
        "file_dep": [cluster.image_kernel] if cluster.image_kernel and not cluster.remote else [],
        "task_dep": ["image"],
        "uptodate": [config_changed({"accel": cluster.accel} if not cluster.remote else
                                    {"accel": cluster.accel, "uri": cluster.uri,
                                     "image": image.stamp(cluster, image.wanted_tarball(cluster))})],
    }
