"""Stage and command: what a checked cluster (device.coherence) needs before its nodes are defined: the
backports QEMU unpacked (checker:qemu), dali's plugin built for it (checker:plugin), both
shared by the checkout's clusters under state/cache/, and the cluster's model of the FAM's
cache lines (checker:model) beside the FAM. docs/coherence.md says what each is for.

`doit coherence` (its words parsed by dali/verbs.py) shows what the plugins found.

Up to date is decided from the files themselves: the QEMU and the plugin are shared by
clusters whose doit databases each know only their own runs."""

from __future__ import annotations

from dali.cluster import Cluster
from dali.coherence import model, plugin, qemu
from dali.steps import GIVEN, CleanStep, Step, uptodate
from dali.storage import Storage
from dali.virt import Libvirt


def model_is_ready(cluster: Cluster, files: Storage) -> bool:
    path = cluster.coherence_model
    return files.have(path) and model.fits(path, cluster.fam_size, cluster.coherence)


def make_model(cluster: Cluster, files: Storage) -> None:
    files.map_shared(cluster.coherence_model, model.file_size(cluster.fam_size),
                     model.header(cluster.fam_size, cluster.coherence))


def show(cluster: Cluster, files: Storage, virt: Libvirt, given=None) -> None:
    from dali import verbs
    from dali.coherence import command
    command.show(cluster, files, virt, **verbs.values("coherence", given))


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    yield {
        "basename": "coherence",
        "doc": "what the checked nodes found since they booted (device.coherence; --reset)",
        "actions": [Step("read the coherence findings", show, cluster, files, virt)],
        "params": [GIVEN], "uptodate": [False],
    }
    path = cluster.coherence_model
    clean = [CleanStep(f"remove {path} if dali made it", files.remove, path, changes=cluster)]
    if cluster.coherence == "off":
        # Nothing to make; still a task, so that definitions can depend on "checker" either
        # way, and so that clean takes a model left from when checking was on.
        yield {"basename": "checker", "actions": None, "task_dep": ["preflight"], "clean": clean,
               "doc": "nothing to do: the FAM is the host's coherent memory (device.coherence = off)"}
        return
    cache = cluster.cache_dir
    yield {"basename": "checker", "name": None, "doc": "the FAM checked as non-coherent memory"}
    yield {
        "basename": "checker", "name": "qemu",
        "doc": "QEMU from Debian's backports, unpacked under state/cache/ (its plugins read registers)",
        "actions": [Step(f"fetch QEMU into {qemu.home(cache)}", qemu.ensure, cache)],
        "uptodate": [(uptodate(qemu.is_ready), [cache], {})],
        "task_dep": ["preflight"],
        # No clean: state/cache/ is the checkout's, shared by its clusters (as the image is).
    }
    yield {
        "basename": "checker", "name": "plugin",
        "doc": "dali's QEMU plugin, built for that QEMU",
        "actions": [Step(f"build {plugin.path(cache)}", plugin.ensure, cache)],
        "uptodate": [(uptodate(plugin.is_built), [cache], {})],
        "task_dep": ["checker:qemu"],
    }
    yield {
        "basename": "checker", "name": "model",
        "doc": "the model of the FAM's cache lines every node's QEMU maps",
        "actions": [Step(f"make {path}", make_model, cluster, files, changes=cluster)],
        "uptodate": [(uptodate(model_is_ready), [cluster, files], {})],
        "task_dep": ["preflight", "fam"],
        "clean": clean,
    }
