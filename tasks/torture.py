"""Commands of the test bench: `doit torture [WORKLOAD ...]` (dali/torture.py) and `doit dump
[NODE ...]` (dali/evidence.py). They run every time they are asked for."""

from __future__ import annotations

import sys

from dali.cluster import Cluster
from dali.steps import Step
from dali.storage import Storage
from dali.virt import Libvirt

# dali.torture, its workloads and dali.evidence are imported by the actions, not here: every
# doit loads this module, and they cost a no-op doit 40 ms (python -X importtime).

PARAMS = [
    {"name": "on", "long": "on", "default": "", "help": "only these nodes: suffixes or names, comma-separated"},
    {"name": "seconds", "long": "seconds", "type": int, "default": None,
     "help": "how long every workload runs (default 30)"},
    {"name": "show_list", "long": "list", "type": bool, "default": False,
     "help": "list the workloads, one line each"},
    {"name": "script", "long": "script", "default": "",
     "help": "your own executable, run on every node (DALI_NODE, DALI_NODE_INDEX, DALI_NODES, DALI_TARGET)"},
    {"name": "target", "long": "target", "default": "",
     "help": "a directory (or the device) on the nodes instead of the mounted filesystem or the device"},
    {"name": "crash", "long": "crash", "type": list, "default": [],
     "help": "NODE@SECONDS: force the node off then, as pulling the plug (repeatable)"},
    {"name": "partition", "long": "partition", "type": list, "default": [],
     "help": "NODE@SECONDS+DURATION: its network link down then, up again after DURATION (repeatable)"},
    {"name": "seed", "long": "seed", "type": int, "default": 0,
     "help": "the workloads' random seed, to repeat a run (0: a new one, printed)"},
    {"name": "compare_disk", "long": "compare-disk", "type": bool, "default": False,
     "help": "run each workload on the NVDIMM and on a shared virtio disk, side by side"},
]


def run(cluster: Cluster, files: Storage, virt: Libvirt, workloads_named=(), **options) -> None:
    from dali import torture
    from dali.pssh import typed_after

    # doit parsed the options it saw before the first workload into `options`; those after it,
    # and words with a '=' (lock:kind=flock), are read from the command line as typed.
    if "torture" in sys.argv:
        options = {p["name"]: p["default"] for p in PARAMS}
    typed = typed_after("torture", list(workloads_named), sys.argv)
    words, options = torture.options_among(typed, PARAMS, options)
    torture.torture(cluster, files, virt, words, **options)


def dump(cluster: Cluster, files: Storage, virt: Libvirt, names=()) -> None:
    from dali import evidence
    from dali.lifecycle import defined, select
    evidence.dump_all(cluster, files, virt, defined(cluster, virt, select(cluster, names)))


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "torture",
        "doc": "workloads on every running node at once, checked; faults in the middle "
               "(doit torture --list)",
        "actions": [Step("torture the cluster", run, cluster, files, virt, changes=cluster)],
        "pos_arg": "workloads_named", "params": PARAMS, "uptodate": [False],
    }
    yield {
        "basename": "dump",
        "doc": "the memory of every running node (or those named) at the same moment: paused, "
               "dumped, resumed",
        "actions": [Step("dump the nodes' memory", dump, cluster, files, virt, changes=cluster)],
        "pos_arg": "names", "uptodate": [False],
    }
