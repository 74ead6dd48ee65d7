"""Stage: the user's own kernel (kernel.path, kernel.modules), made bootable: DIR/kernel/bzImage,
initramfs.cpio and modules.img (dali/own_kernel.py). No task when the image's kernel is booted.

The bzImage and every module file are doit file_deps: a rebuild that changes them (their
contents: doit compares an md5 once a timestamp moved) makes this stale, and through it every
node's definition (tasks/domain.py), and nothing else.
"""

from __future__ import annotations

from dali import own_kernel
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    if cluster.own_kernel is None:
        # Nothing to make; still a task (after preflight), so that domain definitions can
        # depend on "kernel" either way.
        yield {"basename": "kernel", "actions": None, "task_dep": ["preflight"],
               "doc": "nothing to do: the nodes boot the image's kernel (kernel.path is empty)"}
        return
    yield {
        "basename": "kernel",
        "doc": "your kernel as the nodes boot it: bzImage, an initramfs for it, its modules disk",
        "actions": [Step(f"make {cluster.own_kernel.bzimage} bootable", own_kernel.ensure, cluster, files,
                         changes=cluster)],
        "file_dep": own_kernel.inputs(cluster),
        "targets": own_kernel.built(cluster),
        # Made here (targets), and where the nodes boot them: someone may delete those.
        "uptodate": [(uptodate(own_kernel.is_there), [files], {})],
        "task_dep": ["preflight", "fam"],
        "clean": [CleanStep("remove the nodes' copy of your kernel", own_kernel.remove, files,
                            changes=cluster)],
    }
