"""Stage: the FAM file behind the shared NVDIMM (seed step 2)."""

from __future__ import annotations

from dali import fam, marks
from dali.cluster import Cluster
from dali.errors import Step, uptodate
from dali.reporter import log
from dali.virt import Libvirt


def remove(cluster: Cluster, dryrun: bool) -> None:
    marks.remove_if_ours(cluster.fam_path, cluster.tag, log, dryrun)


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "fam",
        "doc": "the FAM file behind the shared NVDIMM",
        "actions": [Step(f"make {cluster.fam_path} for qemu", fam.ensure, cluster)],
        "uptodate": [(uptodate(fam.is_ready), [cluster], {})],
        "task_dep": ["preflight"],
        "clean": [Step(f"remove {cluster.fam_path} if dali made it", remove, cluster)],
    }
