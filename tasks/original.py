"""Stage: boot the original, make its namespace fsdax, shut it down (seed step 4).

original:cached writes the namespace this checkout's original made last for a FAM like this
one (device.namespace_from, dali/namespaces.py) into a FAM still raw: the FAM is then prepared,
and the three steps of the original have nothing to do.
original:boot and original:reconfigure are up to date while the FAM holds an fsdax namespace,
a fact read from the FAM (dali/original.py). original:shutdown powers off the run of the
original that original:boot started (doit keeps which, as boot's value) while that run still
goes on: after every reconfiguration, and again if a run was killed before the original was
off, whether or not reconfigure got to record anything. It never shuts down an original that
the user started later.
"""

from __future__ import annotations

from doit.dependency import UptodateCalculator

from dali import namespaces, original
from dali.cluster import Cluster
from dali.steps import Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    name = cluster.original_node.name
    done = (uptodate(original.prepared), [cluster, files], {})
    yield {
        "basename": "original", "name": "cached",
        "doc": "a new FAM given the namespace an original made for one like it, with no boot",
        "actions": [Step("write the cached namespace into the FAM", namespaces.give, cluster, files, virt,
                         changes=cluster)],
        "task_dep": ["fam"],
        "uptodate": [(uptodate(namespaces.nothing_to_give), [cluster, files, virt], {})],
    }
    yield {
        "basename": "original", "name": "boot",
        "doc": f"boot {name} and wait for its guest agent",
        "actions": [Step(f"boot {name}", original.boot, cluster, files, virt, changes=cluster)],
        "task_dep": [f"define:{name}", "original:cached"],
        "uptodate": [done],
    }
    yield {
        "basename": "original", "name": "reconfigure",
        "doc": f"make {name}'s NVDIMM namespace fsdax",
        "actions": [Step(f"reconfigure {name}'s namespace as fsdax", original.reconfigure, cluster, files, virt,
                            changes=cluster)],
        "task_dep": ["original:boot"],
        "uptodate": [done],
    }
    yield {
        "basename": "original", "name": "shutdown",
        "doc": f"shut {name} down for cloning",
        "actions": [Step(f"shut {name} down", original.shutdown, cluster, virt, changes=cluster)],
        "task_dep": ["original:reconfigure"],
        "uptodate": [_NothingOfBootsRunning(cluster, virt)],
    }


class _NothingOfBootsRunning(UptodateCalculator):
    """Up to date unless the original still runs the run original:boot started. An
    UptodateCalculator, as doit's own result_dep is, to read another task's saved values."""

    def __init__(self, cluster: Cluster, virt: Libvirt):
        super().__init__()
        self.cluster, self.virt = cluster, virt

    def __call__(self, task, values) -> bool:
        booted = (self.get_val("original:boot", "_values_:") or {}).get("run")
        return uptodate(original.nothing_to_shut_down)(self.cluster, self.virt, booted)
