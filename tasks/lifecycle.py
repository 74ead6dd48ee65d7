"""Commands on the running cluster: `doit start`, `doit shutdown`. They run every time asked."""

from __future__ import annotations

from dali import lifecycle
from dali.cluster import Cluster
from dali.errors import Step
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "start",
        "doc": "boot every node at once; wait until each guest agent answers",
        "actions": [Step("start every node", lifecycle.start, cluster, virt, changes=cluster)],
        "task_dep": ["clone"], "uptodate": [False],
    }
    yield {
        "basename": "shutdown",
        "doc": "power every node off gracefully (forced after timeouts.shutdown)",
        "actions": [Step("shut every node down", lifecycle.shutdown, cluster, virt, changes=cluster)],
        "uptodate": [False],
    }
