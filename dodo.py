"""dali: a cluster of VMs sharing one emulated NVDIMM, as a doit task graph.

    doit                 build everything: network, FAM, AppArmor, image, original, clones
    doit clone           the same (the clones are the last stage)
    doit start | shutdown | verify
    doit clean           tear the cluster down (only what dali created)
    doit config=PATH     any of the above with another cluster file

The pipeline, in order; each stage is one module of tasks/:

    preflight -> network, fam, apparmor, image -> disk:<node> -> render:<node> -> define:<node>
      -> original:boot -> original:reconfigure -> original:shutdown -> freeze
      -> disk:<clone> -> define:<clone> -> clone (+ prune)
"""

import os
import sys

from doit import get_var

from tasks import apparmor, config, disks, domain, fam, image, lifecycle, network, original
from tasks import preflight, prune
from tasks.errors import DaliError
from tasks.reporter import DaliReporter
from tasks.virt import Libvirt

try:
    CLUSTER = config.load(get_var("config"), os.environ)
except DaliError as e:
    sys.exit(f"dali: {e}")
CLUSTER.state_dir.mkdir(parents=True, exist_ok=True)
VIRT = Libvirt(CLUSTER.uri, CLUSTER.tag)  # connects on first use
IMAGE = [] if CLUSTER.image.path else ["image"]

DOIT_CONFIG = {
    "default_tasks": ["clone"],
    "dep_file": str(CLUSTER.state_dir / "doit.sqlite"),  # one record per cluster tag
    "backend": "sqlite3",  # dbm loses updates under concurrent runs
    "reporter": DaliReporter,
    "verbosity": 2,
}


def task_preflight():
    """check the host before anything is created"""
    return preflight.task(CLUSTER, VIRT)


def task_network():
    """the libvirt network the nodes share"""
    return network.task(CLUSTER, VIRT)


def task_fam():
    """the FAM file behind the shared NVDIMM"""
    return fam.task(CLUSTER)


def task_apparmor():
    """allow the FAM in libvirt's AppArmor template"""
    return apparmor.task(CLUSTER)


def task_image():
    """the Debian guest image (kernel, initrd, base.qcow2)"""
    if not IMAGE:
        return {"actions": None, "doc": "image.path is set: the user's qcow2 is used"}
    return image.task(CLUSTER)


def task_disk():
    """each node's disk"""
    yield from disks.disk_tasks(CLUSTER, IMAGE)


def task_render():
    """each node's domain XML"""
    yield from domain.render_tasks(CLUSTER, IMAGE)


def task_define():
    """each node defined in libvirt"""
    yield from domain.define_tasks(CLUSTER, VIRT)


def task_original():
    """boot the original, make its namespace fsdax, shut it down"""
    yield from original.tasks(CLUSTER, VIRT)


def task_freeze():
    """freeze the original's disk for cloning"""
    return disks.freeze_task(CLUSTER, VIRT)


def task_prune():
    """remove nodes that left the config"""
    return prune.task(CLUSTER, VIRT)


def task_clone():
    """every clone defined (the default target)"""
    return {"actions": None,
            "task_dep": ["original", "prune"] + [f"define:{n.name}" for n in CLUSTER.clone_nodes]}


def task_lifecycle():
    yield from lifecycle.tasks(CLUSTER, VIRT)
