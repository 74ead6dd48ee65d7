"""Stage: KVM or TCG, decided once per kernel on the libvirt host that runs the nodes
(dali/accel.py probes it).

Its value, {"domain_type": "kvm" | "qemu"}, reaches the render tasks through doit's getargs,
which also makes them rerun when the verdict changes. The image's stamp stands for its kernel:
a new image is probed again, an unchanged one never.
"""

from __future__ import annotations

from doit.tools import config_changed

from dali import accel, image
from dali.cluster import Cluster
from dali.steps import Step
from dali.storage import Storage
from dali.virt import Libvirt


def decide(cluster: Cluster, files: Storage, virt: Libvirt) -> dict:
    return {"domain_type": accel.decide(cluster, files, virt)}


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    kernel = None if cluster.image.path else image.stamp(cluster, image.wanted_tarball(cluster))
    yield {
        "basename": "accel",
        "doc": "KVM or TCG: does a KVM guest really boot there?",
        "actions": [Step("decide between KVM and TCG", decide, cluster, files, virt, changes=cluster)],
        "task_dep": ["image"],
        "uptodate": [config_changed({"accel": cluster.accel, "uri": cluster.uri, "image": kernel,
                                     "coherence": cluster.coherence != "off"})],
    }
