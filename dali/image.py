"""The cluster's guest image: its ssh key, and base.qcow2 + vmlinuz + initrd.img, copied from
the node image that dali/image_builder.py builds once per checkout (tarball, disk size and
initramfs /init) and caches in state/cache/.

What the image was built from is a fact kept on the image itself: base.qcow2 carries the
extended attribute user.dali.image, naming the cached node image it is a copy of. The image is
current when its files are ours and that stamp matches; it is replaced when it does not, unless
node disks are built on it (replacing it would corrupt them): then it stays, and `doit status`
says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dali import disks, marks
from dali.cluster import Cluster
from dali.commands import run
from dali.errors import DaliError
from dali.image_builder import NODE_IMAGE_FILES, node_image, node_image_path, rootfs_recipe, rootfs_tarball_path
from dali.initramfs import build_init, init_path
from dali.reporter import log
from dali.scratch import remove_abandoned_work, remove_tree, work_dir
from dali.virt import Libvirt

STAMP = "user.dali.image"
# What the image's guest side can do, as words in an extended attribute of base.qcow2, for the
# host side to know which way to talk to it: an image kept from an older dali (nodes are built
# on it) lacks the newer words, and its nodes are run the way they were built to be.
FEATURES = "user.dali.image.features"
IMAGE_FEATURES = ("identity-disk",)  # dali/identity_disk.py


def has_feature(cluster: Cluster, feature: str) -> bool:
    """Whether the cluster's image can `feature`; an image not built yet will."""
    if cluster.remote:
        return True  # an image there is uploaded by this dali, never kept from an older one
    try:
        return feature in os.getxattr(cluster.image_dir / "base.qcow2", FEATURES).decode().split()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # built before its features were written down


# --- the ssh key --------------------------------------------------------------------------------

def ensure_ssh_key(cluster: Cluster) -> None:
    """The cluster's key pair, private key 0600 in a 0700 directory. Half a pair (a killed
    ssh-keygen, a deleted file) is completed or made again, never left to ssh-keygen's
    "Overwrite (y/n)?" prompt."""
    key, pub = cluster.ssh_key, cluster.ssh_key.with_suffix(".pub")
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(key.parent, 0o700)
    if key.exists() and not pub.exists():
        # The private key holds the public one: the cluster keeps its identity.
        pub_text = run(["ssh-keygen", "-y", "-f", str(key)], what="ssh-keygen -y")
        tmp = pub.with_name(pub.name + ".new")
        tmp.write_text(pub_text.strip() + f" dali-{cluster.tag}\n")
        tmp.rename(pub)
    elif not (key.exists() and pub.exists()):
        # Per cluster, no passphrase: it only reaches guests on this host's libvirt network.
        for half in (key, pub):
            half.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"dali-{cluster.tag}", "-f", str(key)],
            what="ssh-keygen")
    os.chmod(key, 0o600)


# --- base.qcow2, vmlinuz, initrd.img ---------------------------------------------------------

def stamp(cluster: Cluster, tarball: Path) -> str:
    """The name of the cached node image the cluster's should be a copy of. (Images made
    before the cache were stamped with the tarball and the ssh key they held.)"""
    return node_image_path(tarball, cluster.image.disk_size, init_path(cluster.cache_dir)).name


def _stamp_of(base: Path) -> str | None:
    try:
        return os.getxattr(base, STAMP, follow_symlinks=False).decode()
    except OSError:
        return None


def node_image_is_current(cluster: Cluster, tarball: Path) -> bool:
    files = [cluster.image_dir / name for name in NODE_IMAGE_FILES]
    return (all(marks.is_ours(f, cluster) for f in files)
            and _stamp_of(cluster.image_dir / "base.qcow2") == stamp(cluster, tarball))


def wanted_recipe(cluster: Cluster) -> dict:
    """The debootstrap recipe the image settings ask for now."""
    settings = cluster.image
    return rootfs_recipe(settings.suite, settings.mirror, settings.http_proxy,
                         list(settings.extra_packages))


def wanted_tarball(cluster: Cluster, recipe: dict | None = None) -> Path:
    """The debootstrap tarball of that recipe (it reads the host's apt sources and hashes
    templates/guest/: a caller that has it already passes it)."""
    return rootfs_tarball_path(recipe or wanted_recipe(cluster), cluster.cache_dir)


def built_on_image(cluster: Cluster) -> list[Path]:
    """The disks built on this cluster's base.qcow2 (the original's, or the frozen one)."""
    base = cluster.image_dir / "base.qcow2"
    return [d for d in (cluster.disk(cluster.original_node), cluster.frozen_disk)
            if d.exists() and disks.backing_file(d) == str(base)]


def node_image_is_kept(cluster: Cluster, tarball: Path) -> bool:
    """The image was built from another recipe (or key), but nodes are built on it: replacing it
    would corrupt their disks, so it stays as it is (a dali upgrade changes the recipe, and so
    does image.extra_packages). `doit status` says so; `doit clean`, then `doit`, moves on."""
    base = cluster.image_dir / "base.qcow2"
    return (marks.is_ours(base, cluster) and _stamp_of(base) != stamp(cluster, tarball)
            and bool(built_on_image(cluster)))


def ensure_node_image(cluster: Cluster, tarball: Path) -> None:
    if node_image_is_current(cluster, tarball) or node_image_is_kept(cluster, tarball):
        return
    for name in NODE_IMAGE_FILES:
        path = cluster.image_dir / name
        if os.path.lexists(path) and not marks.is_ours(path, cluster):
            raise DaliError(f"{path} exists but dali did not make it for this cluster: move it "
                            "away, then run doit again")
    cached = node_image(tarball, cluster.image.disk_size, build_init(cluster.cache_dir), log)
    marks.make_dir(cluster.image_dir, cluster)
    remove_abandoned_work(cluster.image_dir)
    staging = work_dir(cluster.image_dir)
    try:
        # Copies, not links or overlays of the cache: the cluster's disks are built on its own
        # base.qcow2, which nothing outside its data directory can take away.
        log(f"copying the node image {cached.name}")
        for name in NODE_IMAGE_FILES:
            shutil.copyfile(cached / name, staging / name)
        # Marked (and stamped) before they move into place, disk last: a run killed between two
        # renames leaves files that are ours and an image that is not current, never a stranger.
        for name in NODE_IMAGE_FILES:
            marks.make_file_private(staging / name)
            marks.mark(staging / name, cluster, also=(cluster.image_dir / name,))
        os.setxattr(staging / "base.qcow2", STAMP, cached.name.encode())
        os.setxattr(staging / "base.qcow2", FEATURES, " ".join(IMAGE_FEATURES).encode())
        for name in NODE_IMAGE_FILES:
            os.replace(staging / name, cluster.image_dir / name)
            marks.mark(cluster.image_dir / name, cluster)
    finally:
        remove_tree(staging)
    log(f"node image ready: {cluster.image_dir / 'base.qcow2'}")


def remove_node_image(cluster: Cluster, virt: Libvirt, dryrun: bool = False) -> None:
    for name in NODE_IMAGE_FILES:
        disks.remove_file(cluster, virt, cluster.image_dir / name, dryrun)
    marks.remove_dir_if_ours(cluster.image_dir, cluster, dryrun)
