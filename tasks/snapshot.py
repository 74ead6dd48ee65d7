"""Stage: the cluster's snapshots (docs/snapshots.md). `doit snapshot NAME`, `doit snapshot --delete
NAME`, `doit snapshots` and `doit rollback NAME` run every time they are asked for, with what
their doit commands parsed (dali/verbs.py); each first carries on with what a stopped one left.
`snapshot-store` builds nothing: it stands between the default target and the disks and the FAM,
so that `doit clean` removes the snapshots before them."""

from __future__ import annotations

from dali.cluster import Cluster
from dali.steps import GIVEN, CleanStep, Step
from dali.storage import Storage
from dali.virt import Libvirt

# dali.snapshot and dali.verbs are imported by the actions, not here: every doit loads this module.


def take_or_delete(cluster: Cluster, files: Storage, virt: Libvirt, given=None) -> None:
    from dali import snapshot, snapshot_store, verbs
    asked = verbs.values("snapshot", given)
    snapshot.converge(cluster, files, virt)
    if asked["delete"]:
        snapshot_store.delete(cluster, files, asked["name"])
    else:
        snapshot.take(cluster, files, virt, asked["name"])


def roll_back(cluster: Cluster, files: Storage, virt: Libvirt, given=None) -> None:
    from dali import snapshot, verbs
    snapshot.converge(cluster, files, virt)
    snapshot.rollback(cluster, files, virt, verbs.values("rollback", given)["name"])


def show(cluster: Cluster, files: Storage) -> None:
    from dali import snapshot_store
    print(snapshot_store.listing(cluster, files))


def remove_all(cluster: Cluster, files: Storage, dryrun: bool = False) -> None:
    from dali import snapshot_store
    snapshot_store.remove_all(cluster, files, dryrun)


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "snapshot",
        "doc": "every node's memory and disk and the FAM at one instant, kept as NAME; "
               "--delete NAME removes one",
        "actions": [Step("take a snapshot of the cluster", take_or_delete, cluster, files, virt,
                         changes=cluster)],
        "params": [GIVEN], "uptodate": [False],
    }
    yield {
        "basename": "snapshots",
        "doc": "the snapshots kept: when, which nodes ran, their size on disk",
        "actions": [Step("list the snapshots", show, cluster, files)],  # only looks: no lock
        "params": [GIVEN], "uptodate": [False],
    }
    yield {
        "basename": "rollback",
        "doc": "every node and the FAM back to the snapshot NAME; the nodes that ran then, resumed",
        "actions": [Step("roll the cluster back", roll_back, cluster, files, virt, changes=cluster)],
        "params": [GIVEN], "uptodate": [False],
    }
    yield {
        "basename": "snapshot-store",
        "doc": "the snapshots kept beside the FAM (nothing to build; doit clean removes them first)",
        "actions": None,
        "task_dep": ["fam"] + [f"disk:{n.name}" for n in cluster.nodes],
        "clean": [CleanStep(f"remove the snapshots of cluster {cluster.tag}", remove_all, cluster, files,
                            changes=cluster)],
    }
