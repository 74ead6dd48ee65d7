"""Stage: the Debian guest image every node boots.

image:sshkey   the cluster's ssh key pair (state/<tag>/ssh/)
image:rootfs   the debootstrap tarball, cached in state/cache/ per recipe (minutes, once)
image:base     base.qcow2, vmlinuz and initrd.img for this cluster (seconds)

No tasks when image.path names the user's own qcow2. Whether image:base is current is a fact of
the files (dali/image.py stamps what they were built from), not doit's memory: a killed run
that lost doit's records does not make dali think the image changed. An image built from an
older recipe stays while nodes are built on it (dali/image.py: node_image_is_kept).
"""

from __future__ import annotations

from dali import image_builder, image
from dali.cluster import Cluster
from dali.steps import CleanStep, Step, uptodate
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt


def build_rootfs(recipe: dict, cluster: Cluster) -> None:
    image_builder.build_rootfs_tarball(recipe, cluster.cache_dir, log)


def gen_tasks(cluster: Cluster, files: Storage, virt: Libvirt):
    if cluster.image.path:
        return
    recipe = image.wanted_recipe(cluster)
    tarball = image.wanted_tarball(cluster, recipe)
    pub = cluster.ssh_key.with_suffix(".pub")
    yield {
        "basename": "image", "name": "sshkey",
        "doc": "the cluster's ssh key pair",
        "actions": [Step("make the cluster's ssh key", image.ensure_ssh_key, cluster, changes=cluster)],
        "targets": [cluster.ssh_key, pub], "uptodate": [True], "task_dep": ["preflight"],
    }
    yield {
        "basename": "image", "name": "rootfs",
        "doc": "the debootstrap tarball, cached per recipe",
        "actions": [Step("debootstrap the guest tree", build_rootfs, recipe, cluster, changes=cluster)],
        # Its name is the recipe's hash: it is there, or the image it would make is not wanted.
        "uptodate": [uptodate(lambda: tarball.exists() or image.node_image_is_kept(cluster, files, tarball))],
        "task_dep": ["preflight"],
    }
    yield {
        "basename": "image", "name": "base",
        "doc": "base.qcow2, vmlinuz and initrd.img",
        "actions": [Step(f"make base.qcow2, vmlinuz and initrd.img{files.where}", image.ensure_node_image,
                         cluster, files, tarball, changes=cluster)],
        "uptodate": [uptodate(lambda: image.node_image_is_current(cluster, files, tarball)
                              or image.node_image_is_kept(cluster, files, tarball))],
        "task_dep": ["preflight", "image:sshkey", "image:rootfs"],
        "clean": [CleanStep(f"remove the image{files.where} if dali made it", image.remove_node_image,
                            cluster, files, changes=cluster)],
    }
