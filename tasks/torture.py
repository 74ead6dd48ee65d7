"""Commands of the test bench: `doit torture [WORKLOAD ...]` (dali/torture.py) and `doit dump
[NODE ...]` (dali/evidence.py). They run every time they are asked for, with what their doit
commands parsed from the words after their names (dali/verbs.py)."""

from __future__ import annotations

from dali.cluster import Cluster
from dali.errors import DaliError
from dali.steps import GIVEN, Step
from dali.storage import Storage
from dali.virt import Libvirt

# dali.torture, its workloads and dali.evidence are imported by the actions, not here: every
# doit loads this module, and they cost a no-op doit 40 ms (python -X importtime); dali.verbs
# (argparse) another 1.4 ms.


def run(cluster: Cluster, files: Storage, virt: Libvirt, given=None) -> None:
    from dali import torture, verbs
    torture.torture(cluster, files, virt, **verbs.values("torture", given))


def dump(cluster: Cluster, files: Storage, virt: Libvirt, given=None) -> None:
    from dali import evidence, verbs
    from dali.lifecycle import defined, select
    names = verbs.values("dump", given)["names"]
    evidence.dump_all(cluster, files, virt, defined(cluster, virt, select(cluster, names)))


def runs(cluster: Cluster, given=None) -> None:
    from dali import runs as kept, verbs
    words = verbs.values("runs", given)["words"]
    if not words:
        print(kept.listing(cluster))
    elif words[0] == "compare":
        print(kept.compare(cluster, words[1:]))
    else:
        raise DaliError(f"{words[0]}: doit runs lists the kept runs; doit runs compare A B compares them")


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "torture",
        "doc": "workloads on every running node at once, checked; faults in the middle "
               "(doit torture --list)",
        "actions": [Step("torture the cluster", run, cluster, files, virt, changes=cluster)],
        "params": [GIVEN], "uptodate": [False],
    }
    yield {
        "basename": "runs",
        "doc": "the torture runs kept (time, workloads, kernel, verdict); doit runs compare A B",
        "actions": [Step("read the kept runs", runs, cluster)],
        "params": [GIVEN], "uptodate": [False],
    }
    yield {
        "basename": "dump",
        "doc": "the memory of every running node (or those named) at the same moment: paused, "
               "dumped, resumed",
        "actions": [Step("dump the nodes' memory", dump, cluster, files, virt, changes=cluster)],
        "params": [GIVEN], "uptodate": [False],
    }
