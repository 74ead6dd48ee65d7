"""Stage: the filesystem on the shared device (fs.type = "ocfs2", dali/ocfs2.py).

fs keeps every running node's OCFS2 configuration current: a clone added while others run joins
the cluster on every node, nobody unmounts. `doit start` brings new nodes up with it mounted.
`doit mkfs --yes` formats on purpose. No tasks with fs.type = "none".
"""

from __future__ import annotations

from dali import ocfs2
from dali.cluster import Cluster
from dali.steps import Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def bring_up(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    ocfs2.bring_up(cluster, files, virt, ocfs2.running_nodes(cluster, files, virt))


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    if cluster.fs.type != "ocfs2":
        # Nothing to keep; still a task (after preflight), so that clone can wait for "fs".
        yield {"basename": "fs", "actions": None, "task_dep": ["preflight"],
               "doc": "nothing to do: fs.type is none (the device as the seed leaves it)"}
        return
    yield {
        "basename": "fs",
        "doc": "OCFS2 on the shared device: every running node configured and mounting it",
        "actions": [Step("set OCFS2 up on the running nodes", bring_up, cluster, files, virt, changes=cluster)],
        "uptodate": [uptodate(lambda: ocfs2.is_current(cluster, files, virt))],
        # Everything `clone` gathers but itself: clone (so `doit` and `doit clone`) waits for this.
        "task_dep": ["original", "golden", "prune", "access"] + [f"define:{n.name}" for n in cluster.nodes],
    }
    yield {
        "basename": "mkfs",
        "doc": "format the shared device as OCFS2 whatever it holds: doit mkfs --yes",
        "actions": [Step("format the shared device", ocfs2.mkfs, cluster, files, virt, changes=cluster)],
        "params": [{"name": "yes", "long": "yes", "type": bool, "default": False,
                    "help": "yes, destroy what the shared device holds"}],
        "task_dep": ["clone"], "uptodate": [False],
    }
