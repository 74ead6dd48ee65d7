"""dali: a cluster of VMs sharing one emulated NVDIMM, as a doit task graph.

    doit                 build everything: network, FAM, AppArmor, image, original, clones
    doit clone           the same (the clones are the last stage)
    doit start | shutdown | destroy [NODE ...]     all nodes, or those named (b or ivpb)
    doit start --batch N     N nodes at a time (default auto: one per host core; 0: all at once)
    doit status | verify
    doit torture [WORKLOAD ...] [--seconds N] [--crash c@10] [--partition c@10+20]   doit --list
    doit dump [NODE ...] every node's memory at the same moment
    doit snapshot NAME   every node's memory and disk and the FAM at one instant (--delete NAME)
    doit snapshots       the snapshots kept;  doit rollback NAME   back to one, together
    doit pssh [--on b,c] CMD ...   doit pput [--on b,c] SRC DEST
    doit restart [NODE ...]   boot what the definitions say now (a rebuilt kernel)
    doit reset           nodes shut off: disks back to the frozen state, the FAM to its golden copy
    doit remove:NODE     delete a node that left the config, with its disk
    doit clean           tear the cluster down (only what dali created); -n says what it would do
    doit config=PATH     any of the above with another cluster file

One task_* per stage, in pipeline order; each stage is one module of tasks/, which says when
its tasks run, and the library dali/ says how:

    preflight -> network, fam, apparmor, image -> accel -> disk:<node> -> render:<node>
      -> define:<node> -> original:boot -> original:reconfigure -> original:shutdown -> freeze
      -> disk:<clone> -> render:<clone> -> define:<clone> -> clone (+ prune, access)
"""

import atexit
import gc
import os
import sys

from doit import get_var

from dali import lock, settings, storage
from dali.commands import exit_cleanly_on_signals
from dali.errors import DaliError, unforeseen
from dali.reporter import DaliReporter
from dali.virt import Libvirt
from tasks import (access, accel, apparmor, checker, clone, disks, domain, fam, freeze, fs, identity_disk,
                   image, kernel, lifecycle, network, original, preflight, prune, reset, snapshot, torture,
                   verify)

# Ctrl-C: one line, exit 130, the programs dali started stopped. Done already by dali's task
# loader (dali/loader.py) when doit runs in the checkout; here for a doit run elsewhere (-f).
exit_cleanly_on_signals()
try:
    CLUSTER = settings.load(get_var("config"), os.environ)
except DaliError as e:
    sys.exit(f"dali: {e}")
except Exception as e:  # still one line, never a traceback (errors.unforeseen)
    sys.exit(unforeseen("reading the settings", e))
VIRT = Libvirt.of(CLUSTER)  # connects on first use
FILES = storage.of(CLUSTER, VIRT)  # where the cluster's files live: a directory here, a pool there
# A cluster that does not exist (refused before anything was made, or cleaned) leaves no doit
# database or lock in state/ either: the last thing any doit does.
atexit.register(lock.forget_if_gone, CLUSTER.lock_file, CLUSTER.dep_file, CLUSTER.state_dir)

# Python's cycle collector walks every live object now and then, and all of them once more as
# the interpreter exits. What a doit run loads (doit, libvirt, jinja2, dali, then the task
# graph) lives until it ends, so the collector is told to leave it alone: frozen now, and again
# at exit. A no-op doit spent a third of what it took beyond its imports in those walks
# (bench/noop.py). Garbage made during the run is still collected as usual.
gc.freeze()
atexit.register(gc.freeze)

DOIT_CONFIG = {
    "default_tasks": ["clone"],
    "dep_file": str(CLUSTER.dep_file),  # one record per cluster
    "backend": "sqlite3",  # dbm loses updates; dali/reporter.py commits sqlite3's per task
    "reporter": DaliReporter,
    "verbosity": 2,  # progress lines as they happen
}


def tasks_of(stage):
    """The stage's task dicts, or the usual one line and a non-zero exit if making them fails."""
    try:
        made = list(stage.gen_tasks(CLUSTER, FILES, VIRT))
    except DaliError as e:
        sys.exit(f"dali: {e}")
    except Exception as e:  # still one line, never a traceback (errors.unforeseen)
        sys.exit(unforeseen(f"making the tasks of {stage.__name__}", e))
    yield from made


def task_preflight():
    """check the host before anything is created"""
    yield from tasks_of(preflight)


def task_network():
    """the libvirt network the nodes share"""
    yield from tasks_of(network)


def task_fam():
    """the FAM file behind the shared NVDIMM"""
    yield from tasks_of(fam)


def task_apparmor():
    """allow the FAM in libvirt's AppArmor template"""
    yield from tasks_of(apparmor)


def task_image():
    """the Debian guest image (kernel, initrd, base.qcow2); none with image.path"""
    yield from tasks_of(image)


def task_accel():
    """KVM or TCG"""
    yield from tasks_of(accel)


def task_kernel():
    """your own kernel, made bootable (kernel.path); none with the image's kernel"""
    yield from tasks_of(kernel)


def task_checker():
    """the FAM checked as non-coherent memory: QEMU, dali's plugin, the model (device.coherence)"""
    yield from tasks_of(checker)


def task_disk():
    """each node's disk"""
    yield from tasks_of(disks)


def task_identity():
    """each node's identity disk: its ssh host key, address and resolver"""
    yield from tasks_of(identity_disk)


def task_domain():
    """each node's domain XML rendered (render:<node>) and defined (define:<node>)"""
    yield from tasks_of(domain)


def task_original():
    """boot the original, make its namespace fsdax, shut it down"""
    yield from tasks_of(original)


def task_freeze():
    """freeze the original's disk for cloning"""
    yield from tasks_of(freeze)


def task_prune():
    """undefine nodes that left the config (remove:NODE deletes one)"""
    yield from tasks_of(prune)


def task_reset():
    """the FAM's golden copy; doit reset (reset:disks, reset:fam)"""
    yield from tasks_of(reset)


def task_access():
    """state/<tag>/ssh_config and state/<tag>/hosts"""
    yield from tasks_of(access)


def task_clone():
    """every clone defined (the default target)"""
    yield from tasks_of(clone)


def task_fs():
    """OCFS2 on the shared device (fs.type); doit mkfs --yes"""
    yield from tasks_of(fs)


def task_lifecycle():
    """doit start | shutdown | destroy [NODE...], status, pssh CMD, pput SRC DEST"""
    yield from tasks_of(lifecycle)


def task_verify():
    """self-test of the shared device"""
    yield from tasks_of(verify)


def task_bench():  # not task_torture: doit refuses a task creator named as a command (dali/verbs.py)
    """doit torture [WORKLOAD ...]: checked workloads on every node at once, faults; doit dump"""
    yield from tasks_of(torture)


def task_snapshots_kept():  # not task_snapshot: doit refuses a task creator named as a command
    """doit snapshot NAME, snapshots, rollback NAME: the whole cluster at one instant"""
    yield from tasks_of(snapshot)
