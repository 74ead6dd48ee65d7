"""Stage: allow the FAM in libvirt's AppArmor template (seed step 2, second half); with
libvirt's own NVDIMM device (device.style native) the template keeps no rule of ours."""

from __future__ import annotations

from doit.tools import run_once

from dali import apparmor
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    template = cluster.apparmor_template
    if cluster.remote:
        # The template is a file of the libvirt host, which dali does not edit: the FAM is a
        # <memory model='nvdimm'> source there (device.style native), which libvirt allows itself.
        yield {"basename": "apparmor", "actions": None, "task_dep": ["preflight"],
               "doc": "nothing to do on a remote libvirt host (device.style native)"}
        return
    yield {
        "basename": "apparmor",
        "doc": "allow the FAM in libvirt's AppArmor template",
        "actions": [Step(f"allow the FAM in {template}" if cluster.device_style == "seed" else
                         f"leave {template} without a rule of ours (device.style native)",
                         apparmor.ensure, cluster, changes=cluster)],
        # None where AppArmor is absent: run_once then shows the skip notice once.
        "uptodate": [run_once, (uptodate(apparmor.is_as_wanted), [cluster], {})],
        "task_dep": ["preflight"],
        "clean": [CleanStep(f"remove the FAM rule from {template}", apparmor.remove_rule, cluster,
                            changes=cluster)],
    }
