"""Stage: allow the FAM in libvirt's AppArmor template (seed step 2, second half)."""

from __future__ import annotations

from doit.tools import run_once

from dali import apparmor
from dali.cluster import Cluster
from dali.errors import CleanStep, Step, uptodate
from dali.virt import Libvirt


def gen_tasks(cluster: Cluster, virt: Libvirt):
    template = cluster.apparmor_template
    yield {
        "basename": "apparmor",
        "doc": "allow the FAM in libvirt's AppArmor template",
        "actions": [Step(f"add the FAM rule to {template}", apparmor.add_rule, cluster, changes=cluster)],
        # has_rule is None where AppArmor is absent: run_once then shows the skip notice once.
        "uptodate": [run_once, (uptodate(apparmor.has_rule), [cluster], {})],
        "task_dep": ["preflight"],
        "clean": [CleanStep(f"remove the FAM rule from {template}", apparmor.remove_rule, cluster,
                            changes=cluster)],
    }
