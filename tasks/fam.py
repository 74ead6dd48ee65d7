"""Stage: the FAM behind the shared NVDIMM (seed step 2), where the cluster's files live
(dali/storage/: a file here, a volume of the cluster's pool on a remote libvirt host). A
rollback a stopped doit began (dali/snapshot.py) is finished before the FAM counts as ready."""

from __future__ import annotations

from dali import fam, snapshot
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def ensure(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    snapshot.converge(cluster, files, virt)  # a stopped rollback puts the FAM back first
    fam.ensure(cluster, files, virt)


def is_ready(cluster: Cluster, files: Storage) -> bool:
    # A rollback stopped halfway left the FAM as far as it got: not ready until it is finished,
    # so nothing reads it (original:boot's check of its namespace) before.
    return fam.is_ready(cluster, files) and not snapshot.pending(cluster)


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    path = cluster.fam_path
    yield {
        "basename": "fam",
        "doc": "the FAM behind the shared NVDIMM",
        "actions": [Step(f"make {path}{files.where} for qemu", ensure, cluster, files, virt, changes=cluster)],
        "uptodate": [(uptodate(is_ready), [cluster, files], {})],
        "task_dep": ["preflight"],
        "clean": [CleanStep(f"remove {path}{files.where} if dali made it and no domain uses it",
                            files.remove, path, changes=cluster)],
    }
