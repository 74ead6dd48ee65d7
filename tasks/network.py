"""Stage: the libvirt network the nodes share, defined, started and autostarted."""

from __future__ import annotations

from dataclasses import asdict

from doit.tools import config_changed

from dali import network
from dali.cluster import Cluster
from dali.errors import Step, uptodate
from dali.render import template_path
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    name = cluster.network.name
    yield {
        "basename": "network",
        "doc": "the libvirt network the nodes share",
        "actions": [Step(f"define and start network {name}", network.ensure, cluster, virt)],
        "file_dep": [template_path(network.TEMPLATE)],
        "task_dep": ["preflight"],
        "uptodate": [config_changed(asdict(cluster.network)), (uptodate(network.is_live), [cluster, virt], {})],
        "clean": [Step(f"stop and undefine network {name}", network.remove, cluster, virt)],
    }
