"""Stage: check the host before anything is created; last in `doit clean`, sweep what is left."""

from __future__ import annotations

import shutil

from dali import cleaning, disks, marks, preflight
from dali.cluster import Cluster
from dali.domain import gdb_socket
from dali.errors import CleanStep, DaliError, Step, uptodate
from dali.virt import Libvirt


def check(cluster: Cluster, virt: Libvirt) -> None:
    found = preflight.problem(cluster, virt)
    if found:
        raise DaliError(found)
    preflight.make_state_dir(cluster)


def sweep(cluster: Cluster, virt: Libvirt, dryrun: bool) -> None:
    """preflight is the root of the graph, so `doit clean` reaches it last: remove whatever
    this cluster's mark is still on in the data directory (a pruned node's disk, an image file),
    the directories dali made once they are empty, and the cluster's state/ folder."""
    folders = [cluster.image_dir, cluster.kernel_dir, gdb_socket(cluster, "x").parent, cluster.data_dir]
    left = [p for d in folders if d.is_dir() for p in d.iterdir()
            if p.is_file() and marks.is_ours(p, cluster)]
    while left:  # a disk goes before the disk it is built on: repeat while one goes
        for path in left:
            disks.remove_file(cluster, virt, path, dryrun)
        if dryrun or all(p.exists() for p in left):
            break
        left = [p for p in left if p.exists()]
    for folder in folders:
        marks.remove_dir_if_ours(folder, cluster, dryrun)
    if cluster.state_dir.exists():
        if not dryrun:
            shutil.rmtree(cluster.state_dir)
        cleaning.said("state directory", cluster.state_dir, dryrun)


def gen_tasks(cluster: Cluster, virt: Libvirt):
    yield {
        "basename": "preflight",
        "doc": "check the host before anything is created",
        "actions": [Step("check the host", check, cluster, virt)],
        "clean": [CleanStep(f"remove what is left of cluster {cluster.tag}", sweep, cluster, virt,
                            changes=cluster)],
        # Up to date while the host passes: a failing check makes the action run and report it.
        "uptodate": [uptodate(lambda: preflight.problem(cluster, virt) is None
                              and preflight.has_state_dir(cluster))],
    }
