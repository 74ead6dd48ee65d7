"""Stage: the Debian guest image every node boots.

image:sshkey   the cluster's ssh key pair (state/<tag>/ssh/)
image:rootfs   the debootstrap tarball, cached in state/cache/ per recipe (minutes, once)
image:base     base.qcow2, vmlinuz and initrd.img for this cluster (seconds)

No tasks when image.path names the user's own qcow2.
"""

from __future__ import annotations

from doit.tools import config_changed

from dali import marks
from dali.cluster import Cluster
from dali.commands import run
from dali.errors import DaliError, Step
from dali.guest_image import (NODE_IMAGE_FILES, build_node_image, build_rootfs_tarball,
                              rootfs_recipe, rootfs_tarball_path)
from dali.reporter import log
from dali.virt import Libvirt


def make_key(cluster: Cluster) -> None:
    # Per cluster, no passphrase: it only reaches guests on this host's libvirt network.
    key = cluster.ssh_key
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"dali-{cluster.tag}", "-f", str(key)],
        what="ssh-keygen")


def build_rootfs(recipe: dict, cluster: Cluster) -> None:
    build_rootfs_tarball(recipe, cluster.cache_dir, log)


def build_base(cluster: Cluster, tarball) -> None:
    original_disk = cluster.disk(cluster.original_node)
    if original_disk.exists():
        # The nodes' disks are overlays on base.qcow2: replacing it would corrupt them.
        raise DaliError(f"the image recipe (image.* settings) changed but {original_disk} "
                        "is built on the old image: revert the change, or run doit clean "
                        "(discarding the nodes' disks) and then doit")
    build_node_image(tarball, cluster.ssh_key.with_suffix(".pub").read_text(), cluster.image_dir,
                     cluster.image.disk_size, log)
    for name in NODE_IMAGE_FILES:
        marks.mark(cluster.image_dir / name, cluster.tag)


def remove_base(cluster: Cluster, dryrun: bool) -> None:
    for name in NODE_IMAGE_FILES:
        marks.remove_if_ours(cluster.image_dir / name, cluster.tag, log, dryrun)
    out = cluster.image_dir
    if not dryrun and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def gen_tasks(cluster: Cluster, virt: Libvirt):
    if cluster.image.path:
        return
    settings = cluster.image
    recipe = rootfs_recipe(settings.suite, settings.mirror, settings.http_proxy,
                           list(settings.extra_packages))
    tarball = rootfs_tarball_path(recipe, cluster.cache_dir)
    pub = cluster.ssh_key.with_suffix(".pub")
    yield {
        "basename": "image", "name": "sshkey",
        "doc": "the cluster's ssh key pair",
        "actions": [Step("make the cluster's ssh key", make_key, cluster)],
        "targets": [cluster.ssh_key, pub], "uptodate": [True], "task_dep": ["preflight"],
    }
    yield {
        "basename": "image", "name": "rootfs",
        "doc": "the debootstrap tarball, cached per recipe",
        "actions": [Step("debootstrap the guest tree", build_rootfs, recipe, cluster)],
        "targets": [tarball], "uptodate": [config_changed(recipe)], "task_dep": ["preflight"],
    }
    yield {
        "basename": "image", "name": "base",
        "doc": "base.qcow2, vmlinuz and initrd.img",
        "actions": [Step("make base.qcow2, vmlinuz and initrd.img", build_base, cluster, tarball)],
        "file_dep": [tarball, pub], "targets": [cluster.image_dir / n for n in NODE_IMAGE_FILES],
        "task_dep": ["preflight"],
        "clean": [Step("remove the image if dali made it", remove_base, cluster)],
    }
