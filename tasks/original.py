"""Stages 7-9 for the original node: boot it, make its NVDIMM namespace fsdax, shut it down.

The three are subtasks original:boot, original:reconfigure, original:shutdown. All three are
up to date once state/<tag>/original.json records that the current FAM was prepared: the fsdax
info block lives in the FAM itself, so a redefined domain needs no second reconfiguration, but
a new FAM (another inode) does. The record is written last, by original:shutdown, so an
interrupted run simply starts the three again (each step is safe to repeat).
"""

from __future__ import annotations

import json
import time

from tasks import errors, ndctl
from tasks.config import Cluster
from tasks.errors import DaliError
from tasks.reporter import log
from tasks.virt import Libvirt


def _record(cluster: Cluster):
    return cluster.state_dir / "original.json"


def ndctl_record(cluster: Cluster):
    return cluster.state_dir / f"ndctl-{cluster.original_node.name}.json"


def fam_identity(cluster: Cluster) -> list[int]:
    st = cluster.fam_path.stat()
    return [st.st_dev, st.st_ino]


def prepared(cluster: Cluster) -> bool:
    try:
        record = json.loads(_record(cluster).read_text())
        return record["fam"] == fam_identity(cluster)
    except (OSError, ValueError, KeyError):
        return False


def _domain(cluster: Cluster, virt: Libvirt):
    dom = virt.domain(cluster.original_node.name)
    if dom is None:
        raise DaliError(f"{cluster.original_node.name} is not defined: run doit")
    return dom


def boot(cluster: Cluster, virt: Libvirt) -> None:
    dom = _domain(cluster, virt)
    virt.start(dom)
    log(f"{dom.name()}: started; waiting for its guest agent (TCG boots take a minute)")
    took = virt.wait_for_agent(dom, cluster.boot_timeout, log)
    log(f"{dom.name()}: guest agent answered after {took:.0f} s")


def reconfigure(cluster: Cluster, virt: Libvirt) -> None:
    dom = _domain(cluster, virt)
    ns = ndctl.namespace(virt, dom)
    log(f"{dom.name()}: {ndctl.NAMESPACE} is in mode {ns.get('mode')}, size {ns.get('size')}")
    if ns.get("mode") != "fsdax":
        log(f"{dom.name()}: ndctl create-namespace --reconfig={ndctl.NAMESPACE} --mode=fsdax --force")
        ndctl.reconfigure_fsdax(virt, dom)
        ns = ndctl.namespace(virt, dom)
    if ns.get("mode") != "fsdax" or not ns.get("size"):
        raise DaliError(f"{dom.name()}: {ndctl.NAMESPACE} is still in mode {ns.get('mode')} "
                        "after reconfiguring: see ndctl's output in the guest")
    ndctl_record(cluster).write_text(json.dumps(ns, indent=2) + "\n")
    log(f"{dom.name()}: {ndctl.NAMESPACE} fsdax, size {ns['size']}, blockdev {ns.get('blockdev')}")


def shutdown(cluster: Cluster, virt: Libvirt) -> None:
    dom = _domain(cluster, virt)
    how = virt.shutdown(dom, cluster.shutdown_timeout, log)
    log(f"{dom.name()}: {how}; ready for cloning")
    _record(cluster).write_text(json.dumps({"fam": fam_identity(cluster),
                                            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def tasks(cluster: Cluster, virt: Libvirt):
    name = cluster.original_node.name
    done = errors.uptodate(lambda: prepared(cluster))
    steps = [("boot", boot, [f"define:{name}"]),
             ("reconfigure", reconfigure, ["original:boot"]),
             ("shutdown", shutdown, ["original:reconfigure"])]
    for step, fn, deps in steps:
        yield {
            "name": step,
            "actions": [errors.action(lambda fn=fn: fn(cluster, virt))],
            "task_dep": deps,
            "uptodate": [done],
            "verbosity": 2,
        }
