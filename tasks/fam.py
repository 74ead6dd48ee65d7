"""Stage: the FAM file behind the shared NVDIMM (seed step 2)."""

from __future__ import annotations

from dali import disks, fam
from dali.cluster import Cluster
from dali.errors import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "fam",
        "doc": "the FAM file behind the shared NVDIMM",
        "actions": [Step(f"make {cluster.fam_path} for qemu", fam.ensure, cluster, changes=cluster)],
        "uptodate": [(uptodate(fam.is_ready), [cluster], {})],
        "task_dep": ["preflight"],
        "clean": [CleanStep(f"remove {cluster.fam_path} if dali made it and no domain uses it",
                            disks.remove_file, cluster, virt, cluster.fam_path, changes=cluster)],
    }
