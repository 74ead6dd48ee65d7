"""Stage: the FAM file behind the shared NVDIMM (seed step 2): a file here, or a volume of the
cluster's storage pool on a remote libvirt host (dali/remote.py)."""

from __future__ import annotations

from dali import disks, fam, remote
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    path = cluster.fam_path
    if cluster.remote:
        make = Step(f"make {path} on {cluster.uri}", remote.ensure_fam, cluster, virt, changes=cluster)
        ready = (uptodate(remote.fam_is_ready), [cluster, virt], {})
        remove = remote.remove_volume
    else:
        make = Step(f"make {path} for qemu", fam.ensure, cluster, changes=cluster)
        ready = (uptodate(fam.is_ready), [cluster], {})
        remove = disks.remove_file
    yield {
        "basename": "fam",
        "doc": "the FAM behind the shared NVDIMM",
        "actions": [make],
        "uptodate": [ready],
        "task_dep": ["preflight"],
        "clean": [CleanStep(f"remove {path} if dali made it and no domain uses it", remove, cluster, virt,
                            path, changes=cluster)],
    }
