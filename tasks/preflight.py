"""Stage: check the host before anything is created; last in `doit clean`, sweep what is left."""

from __future__ import annotations

import shutil

from dali import marks, preflight
from dali.cluster import Cluster
from dali.errors import DaliError, Step
from dali.reporter import log
from dali.virt import Libvirt


def check(cluster: Cluster, virt: Libvirt) -> None:
    found = preflight.problem(cluster, virt)
    if found:
        raise DaliError(found)


def sweep(cluster: Cluster, dryrun: bool) -> None:
    """preflight is the root of the graph, so `doit clean` reaches it last: remove whatever
    dali-marked file is left in the data directory (a frozen disk, a pruned node's disk), the
    directory if that empties it, and the cluster's state/ folder."""
    if cluster.data_dir.is_dir():
        for path in sorted(cluster.data_dir.iterdir()):
            if path.is_file():
                marks.remove_if_ours(path, cluster.tag, log, dryrun)
        if not dryrun:
            try:
                cluster.data_dir.rmdir()
            except OSError:
                log(f"left {cluster.data_dir} in place: it holds files dali did not create")
    if cluster.state_dir.exists():
        if dryrun:
            log(f"would remove {cluster.state_dir}")
        else:
            shutil.rmtree(cluster.state_dir)


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "preflight",
        "doc": "check the host before anything is created",
        "actions": [Step("check the host", check, cluster, virt)],
        "clean": [Step(f"remove what is left of cluster {cluster.tag}", sweep, cluster)],
        # Up to date while the host passes: a failing check makes the action run and report it.
        "uptodate": [lambda: preflight.problem(cluster, virt) is None],
    }
