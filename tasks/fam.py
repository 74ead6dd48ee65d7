"""Stage: the FAM behind the shared NVDIMM (seed step 2), where the cluster's files live
(dali/storage/: a file here, a volume of the cluster's pool on a remote libvirt host)."""

from __future__ import annotations

from dali import fam
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    path = cluster.fam_path
    yield {
        "basename": "fam",
        "doc": "the FAM behind the shared NVDIMM",
        "actions": [Step(f"make {path}{files.where} for qemu", fam.ensure, cluster, files, virt, changes=cluster)],
        "uptodate": [(uptodate(fam.is_ready), [cluster, files], {})],
        "task_dep": ["preflight"],
        "clean": [CleanStep(f"remove {path}{files.where} if dali made it and no domain uses it",
                            files.remove, path, changes=cluster)],
    }
