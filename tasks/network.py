"""Stage: the libvirt network the nodes share, defined, started and autostarted."""

from __future__ import annotations

from doit.tools import config_changed

from dali import network
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.render import template_path
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    name = cluster.network.name
    yield {
        "basename": "network",
        "doc": "the libvirt network the nodes share",
        "actions": [Step(f"define and start network {name}", network.ensure, cluster, virt,
                         changes=cluster)],
        "file_dep": [template_path(network.TEMPLATE)],
        "task_dep": ["preflight"],
        # Unset addresses stay None here: the subnet picked for them is kept by libvirt.
        "uptodate": [config_changed(cluster.network._asdict()), (uptodate(network.is_live), [cluster, virt], {})],
        "clean": [CleanStep(f"stop and undefine network {name}", network.remove, cluster, virt,
                            changes=cluster)],
    }
