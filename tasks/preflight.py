"""Stage: check the host before anything is created; last in `doit clean`, sweep what is left."""

from __future__ import annotations

from dali import preflight
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def check(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    found = preflight.problem(cluster, files, virt)
    if found:
        raise DaliError(found)
    preflight.make_state_dir(cluster)


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "preflight",
        "doc": "check the host before anything is created",
        "actions": [Step("check the host", check, cluster, files, virt)],
        "clean": [CleanStep(f"remove what is left of cluster {cluster.tag}", preflight.sweep, cluster, files,
                            changes=cluster)],
        # Up to date while the host passes: a failing check makes the action run and report it.
        "uptodate": [uptodate(lambda: preflight.problem(cluster, files, virt) is None
                              and preflight.has_state_dir(cluster))],
    }
