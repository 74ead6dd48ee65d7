"""Stage: nodes whose suffix left the config (dali/prune.py).

prune undefines them (shut-off ones) and keeps their disks; remove:NODE, one task per node
whose disk is still here, deletes one on request; `doit clean` removes them all.
"""

from __future__ import annotations

from dali import prune
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "prune",
        "doc": "undefine shut-off nodes that left the config (their disks are kept)",
        "actions": [Step("undefine nodes that left the config", prune.undefine_stale, cluster, virt,
                         changes=cluster)],
        "uptodate": [uptodate(lambda: not prune.stale_domains(cluster, virt))],
        "task_dep": ["preflight", "network"],
        "clean": [CleanStep(f"remove every node of cluster {cluster.tag} that left the config",
                            prune.remove_all_stale, cluster, files, virt, changes=cluster)],
    }
    yield {"basename": "remove", "name": None,
           "doc": "remove:NODE deletes a node that left the config, with its disk"}
    for name in prune.left_over(cluster, files):
        yield {
            "basename": "remove", "name": name,
            "doc": f"undefine {name} and delete its disk (it left the config)",
            "actions": [Step(f"remove {name} and its disk", prune.remove, cluster, files, virt, name,
                             changes=cluster)],
            "uptodate": [False],
        }
