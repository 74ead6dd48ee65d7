"""Command: `doit verify`, the self-test of the shared device on the running nodes."""

from __future__ import annotations

from dali import verify
from dali.cluster import Cluster
from dali.steps import Step
from dali.virt import Libvirt


def run(cluster: Cluster, virt: Libvirt) -> None:
    verify.verify(cluster, virt)


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "verify",
        "doc": "self-test on running nodes: fsdax everywhere, shared writes, unique identities",
        "actions": [Step("verify the shared device", run, cluster, virt, changes=cluster)],
        "uptodate": [False],
    }
