"""Command: `doit verify`, the self-test of the shared device on the running nodes."""

from __future__ import annotations

from dali import verify
from dali.cluster import Cluster
from dali.steps import Step
from dali.storage import Storage
from dali.virt import Libvirt


def run(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    verify.verify(cluster, files, virt)


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "verify",
        "doc": "self-test on running nodes: fsdax everywhere, shared writes, unique identities",
        "actions": [Step("verify the shared device", run, cluster, files, virt, changes=cluster)],
        "uptodate": [False],
    }
