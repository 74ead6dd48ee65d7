"""The cluster's guest image: its ssh key, and base.qcow2 + vmlinuz + initrd.img, copied from
the node image that dali/image_builder.py builds once per checkout (tarball, disk size and
initramfs /init) and caches in state/cache/.

What the image was built from is a fact kept with the image itself (Storage.fact: an extended
attribute here, the pool's marker on a remote host): base.qcow2's `stamp` names the cached node
image it is a copy of. The image is current when its files are ours and whole and that stamp
matches; it is replaced when it does not, unless node disks are built on it (replacing it would
corrupt them): then it stays, and `doit status` says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from dali.cluster import Cluster
from dali.commands import run
from dali.image_builder import NODE_IMAGE_FILES, node_image, node_image_path, rootfs_recipe, rootfs_tarball_path
from dali.initramfs import build_init, init_path
from dali.reporter import log
from dali.storage import Storage

# What the image's guest side can do, as words written down with base.qcow2 (fact `features`),
# for the host side to know which way to talk to it: an image kept from an older dali (nodes are
# built on it) lacks the newer words, and its nodes are run the way they were built to be.
IMAGE_FEATURES = ("identity-disk",)  # dali/identity_disk.py


def base(files: Storage) -> Path:
    return files.image_dir / "base.qcow2"


def kernel(files: Storage) -> Path:
    """The built image's kernel (the accel probe boots it)."""
    return files.image_dir / "vmlinuz"


def has_feature(files: Storage, feature: str) -> bool:
    """Whether the cluster's image can `feature`; an image not built yet will."""
    if not files.exists(base(files)):
        return True
    return feature in (files.fact(base(files), "features") or "").split()  # none: built before they were written down


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


def node_image_is_current(cluster: Cluster, files: Storage, tarball: Path) -> bool:
    paths = [files.image_dir / name for name in NODE_IMAGE_FILES]
    return (all(files.complete(p) for p in paths)
            and files.fact(base(files), "stamp") == stamp(cluster, tarball))


def wanted_recipe(cluster: Cluster) -> dict:
    """The debootstrap recipe the image settings ask for now."""
    settings = cluster.image
    return rootfs_recipe(settings.suite, settings.mirror, settings.http_proxy,
                         list(settings.extra_packages))


def wanted_tarball(cluster: Cluster, recipe: dict | None = None) -> Path:
    """The debootstrap tarball of that recipe (it reads the host's apt sources and hashes
    templates/guest/: a caller that has it already passes it)."""
    return rootfs_tarball_path(recipe or wanted_recipe(cluster), cluster.cache_dir)


def built_on_image(cluster: Cluster, files: Storage) -> list[Path]:
    """The disks built on this cluster's base.qcow2 (the original's, or the frozen one)."""
    return [d for d in (cluster.disk(cluster.original_node), cluster.frozen_disk)
            if files.exists(d) and files.backing(d) == str(base(files))]


def node_image_is_kept(cluster: Cluster, files: Storage, tarball: Path) -> bool:
    """The image was built from another recipe, but nodes are built on it: replacing it would
    corrupt their disks, so it stays as it is (a dali upgrade changes the recipe, and so does
    image.extra_packages). `doit status` says so; `doit clean`, then `doit`, moves on."""
    return (files.is_ours(base(files)) and files.fact(base(files), "stamp") != stamp(cluster, tarball)
            and bool(built_on_image(cluster, files)))


def ensure_node_image(cluster: Cluster, files: Storage, tarball: Path) -> None:
    if node_image_is_current(cluster, files, tarball) or node_image_is_kept(cluster, files, tarball):
        return
    for name in NODE_IMAGE_FILES:
        files.have(files.image_dir / name)  # one dali did not make is refused before anything
    cached = node_image(tarball, cluster.image.disk_size, build_init(cluster.cache_dir), log)
    # Copies, not links or overlays of the cache: the cluster's disks are built on its own
    # base.qcow2, which nothing outside its data directory can take away. The disk last, with
    # its stamp: a run killed between two files leaves an image that is not current, and the
    # next run copies it again.
    made = stamp(cluster, tarball)
    log(f"copying the node image {cached.name}{files.where}")
    for name in sorted(NODE_IMAGE_FILES, key=lambda n: n == "base.qcow2"):
        if name == "base.qcow2" or not files.complete(files.image_dir / name) \
                or files.fact(files.image_dir / name, "stamp") != made:
            size = (cached / name).stat().st_size
            log(f"copying {name} ({size / 2**20:.0f} MiB) to {files.image_dir}{files.where}")
            facts = {"stamp": made} | ({"features": " ".join(IMAGE_FEATURES)} if name == "base.qcow2" else {})
            files.put(files.image_dir / name, cached / name, **facts)
    log(f"node image ready: {base(files)}{files.where}")


def remove_node_image(cluster: Cluster, files: Storage, dryrun: bool = False) -> None:
    for name in NODE_IMAGE_FILES:
        files.remove(files.image_dir / name, dryrun)
