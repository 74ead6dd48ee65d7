"""Stage: boot the original, make its namespace fsdax, shut it down (seed step 4).

original:boot and original:reconfigure are up to date while the FAM holds an fsdax namespace,
a fact read from the FAM (dali/original.py). original:shutdown follows reconfigure's result:
it runs after every reconfiguration, and again if a run was killed between the two, but never
shuts down an original that the user started later.
"""

from __future__ import annotations

from doit.tools import result_dep

from dali import original
from dali.cluster import Cluster
from dali.errors import Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    name = cluster.original_node.name
    done = (uptodate(original.prepared), [cluster], {})
    yield {
        "basename": "original", "name": "boot",
        "doc": f"boot {name} and wait for its guest agent",
        "actions": [Step(f"boot {name}", original.boot, cluster, virt, changes=cluster)],
        "task_dep": [f"define:{name}"],
        "uptodate": [done],
    }
    yield {
        "basename": "original", "name": "reconfigure",
        "doc": f"make {name}'s NVDIMM namespace fsdax",
        "actions": [Step(f"reconfigure {name}'s namespace as fsdax", original.reconfigure, cluster, virt,
                            changes=cluster)],
        "task_dep": ["original:boot"],
        "uptodate": [done],
    }
    yield {
        "basename": "original", "name": "shutdown",
        "doc": f"shut {name} down for cloning",
        "actions": [Step(f"shut {name} down", original.shutdown, cluster, virt, changes=cluster)],
        "uptodate": [result_dep("original:reconfigure")],
    }
