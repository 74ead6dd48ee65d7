"""Stage: allow the FAM in libvirt's AppArmor template (seed step 2, second half); with
libvirt's own NVDIMM device (device.style native) the template keeps no rule of ours, which is
also what a remote libvirt host asks for (the settings refuse the seed's style there: its
template is not this machine's to edit)."""

from __future__ import annotations

from doit.tools import run_once

from dali import apparmor
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    template = cluster.apparmor_template
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
