"""Commands on the running cluster, for every node or the ones named (`doit start b c`):
`doit start`, `doit shutdown`, `doit destroy`, `doit restart`, `doit status`, `doit pssh`,
`doit pput`.
They run every time they are asked for; pssh and pput with what their doit commands parsed from
the words after their names (dali/verbs.py)."""

from __future__ import annotations

from dali import lifecycle, pssh, startup, status
from dali.cluster import Cluster
from dali.steps import GIVEN, Step
from dali.storage import Storage
from dali.virt import Libvirt

BATCH = {"name": "batch", "long": "batch", "type": str, "default": "auto",
         "help": "boot this many nodes at a time, the next ones once those are up; 0: all at once; "
                 "auto: one node per host core (per node.vcpus cores)"}


def show_status(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    status.status(cluster, files, virt)


def run_command(cluster: Cluster, files: Storage, virt: Libvirt, given=None) -> None:
    from dali import verbs  # argparse: a millisecond that a doit without pssh does not spend
    pssh.pssh(cluster, files, virt, **verbs.values("pssh", given))


def put_file(cluster: Cluster, files: Storage, virt: Libvirt, given=None) -> None:
    from dali import verbs
    pssh.pput(cluster, files, virt, **verbs.values("pput", given))


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "start",
        "doc": "boot every node (or those named); wait until each is up: guest agent, host key, sshd",
        "actions": [Step("start nodes", startup.start, cluster, files, virt, changes=cluster)],
        "pos_arg": "names", "params": [BATCH], "task_dep": ["clone"], "uptodate": [False],
    }
    yield {
        "basename": "shutdown",
        "doc": "power every node (or those named) off gracefully, forced after timeouts.shutdown",
        "actions": [Step("shut nodes down", lifecycle.shutdown, cluster, files, virt, changes=cluster)],
        "pos_arg": "names", "uptodate": [False],
    }
    yield {
        "basename": "destroy",
        "doc": "force every node (or those named) off at once, as pulling the plug",
        "actions": [Step("force nodes off", lifecycle.destroy, cluster, files, virt, changes=cluster)],
        "pos_arg": "names", "uptodate": [False],
    }
    yield {
        "basename": "restart",
        "doc": "shut the running nodes (or those named) down and start them on what their "
               "definitions say now: a rebuilt kernel",
        "actions": [Step("restart nodes", startup.restart, cluster, files, virt, changes=cluster)],
        "pos_arg": "names", "params": [BATCH], "task_dep": ["clone"], "uptodate": [False],
    }
    yield {
        "basename": "status",
        "doc": "one row per node (state, address, pmem, disk, uptime), the network and the FAM",
        "actions": [Step("show the cluster", show_status, cluster, files, virt)],  # only looks: no lock
        "uptodate": [False],
    }
    yield {
        "basename": "pssh",
        "doc": "run a shell command on every running node (--on b,c: those) through the guest agent",
        "actions": [Step("run a command on the nodes", run_command, cluster, files, virt)],
        "params": [GIVEN], "uptodate": [False],
    }
    yield {
        "basename": "pput",
        "doc": "put a file on every running node (--on b,c: those): doit pput SRC DEST",
        "actions": [Step("put a file on the nodes", put_file, cluster, files, virt)],
        "params": [GIVEN], "uptodate": [False],
    }

