"""Stage: the FAM file behind the shared NVDIMM (seed step 2): a file here, or a volume of the
cluster's storage pool on a remote libvirt host (dali/remote.py)."""

from __future__ import annotations

from dali import disks, fam, remote
from dali.cluster import Cluster
from dali.errors import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    if cluster.remote:
        yield {
            "basename": "fam",
            "doc": "the FAM volume behind the shared NVDIMM",
            "actions": [Step(f"make {cluster.fam_path} on {cluster.uri}", remote.ensure_fam, cluster, virt,
                             changes=cluster)],
            "uptodate": [(uptodate(remote.fam_is_ready), [cluster, virt], {})],
            "task_dep": ["preflight"],
            "clean": [CleanStep(f"remove {cluster.fam_path} on {cluster.uri} if dali made it",
                                remote.remove_volume, cluster, virt, cluster.fam_path, changes=cluster)],
        }
        return
    yield {
        "basename": "fam",
        "doc": "the FAM file behind the shared NVDIMM",
        "actions": [Step(f"make {cluster.fam_path} for qemu", fam.ensure, cluster, changes=cluster)],
        "uptodate": [(uptodate(fam.is_ready), [cluster], {})],
        "task_dep": ["preflight"],
        "clean": [CleanStep(f"remove {cluster.fam_path} if dali made it and no domain uses it",
                            disks.remove_file, cluster, virt, cluster.fam_path, changes=cluster)],
    }
