"""Stage: how to reach the nodes: state/<tag>/ssh_config and state/<tag>/hosts, kept current
with the nodes' fixed addresses, and known_hosts with their identity disks' keys
(dali/access.py)."""

from __future__ import annotations

from dali import access, network
from dali.cluster import Cluster
from dali.steps import Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def write(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    access.write(cluster, files, network.addresses_of(cluster, virt))


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "access",
        "doc": "state/<tag>/ssh_config and state/<tag>/hosts: every node by name and address",
        "actions": [Step("write ssh_config and hosts", write, cluster, files, virt, changes=cluster)],
        "uptodate": [uptodate(lambda: access.are_current(cluster, files, network.addresses_of(cluster, virt)))],
        "task_dep": ["network", "image:sshkey", "identity"] if not cluster.image.path else ["network"],
    }
