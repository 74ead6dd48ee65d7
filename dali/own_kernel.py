"""The user's own kernel (kernel.path, kernel.modules), made bootable by every node.

Made in state/<tag>/kernel/: a copy of the bzImage (libvirt relabels the files a domain boots,
and the user may rebuild while nodes run), an initramfs made for that kernel and a disk of its
modules (dali/initramfs.py builds both); then put where the nodes boot them, the kernel_dir of
the cluster's Storage (DIR/kernel/ here, the cluster's pool on a remote host).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dali.cluster import Cluster
from dali.initramfs import (MODULES_DISK_SERIAL, build_init, build_initramfs, build_modules_disk,
                            kernel_release, modules_dir)
from dali.reporter import log
from dali.scratch import remove_abandoned_work
from dali.storage import Storage

__all__ = ["MODULES_DISK_SERIAL", "booted", "built", "ensure", "inputs", "is_there", "remove"]


def inputs(cluster: Cluster) -> list[Path]:
    """What the nodes' boot is made from: the bzImage and every file of its modules directory.
    As doit file_deps they make the kernel stale when their contents change (doit compares an
    md5 when a timestamp moved), and only then."""
    own = cluster.own_kernel
    moddir = modules_dir(own.modules, kernel_release(own.bzimage))
    files = [p for p in moddir.rglob("*") if p.is_file() and not p.is_symlink()]
    # depmod's outputs (modules.dep, modules.alias, ...) are remade for the disk: not inputs.
    generated = {p for p in files if p.parent == moddir and p.name.startswith("modules.")
                 and p.name not in ("modules.order", "modules.builtin", "modules.builtin.modinfo")}
    return [own.bzimage, *sorted(set(files) - generated)]


KERNEL_FILES = ("bzImage", "initramfs.cpio", "modules.img")


def build_dir(cluster: Cluster) -> Path:
    """Where the three files are made on this machine (state/<tag>/kernel/), whence they are
    put where the nodes boot them (kernel_dir of the cluster's Storage)."""
    return cluster.state_dir / "kernel"


def built(cluster: Cluster) -> list[Path]:
    """bzImage, initramfs.cpio and modules.img as made on this machine: doit's targets, and
    file_deps of every node's definition (a rebuilt kernel makes them stale)."""
    return [build_dir(cluster) / name for name in KERNEL_FILES]


def booted(files: Storage) -> list[Path]:
    """The same three where the nodes boot them."""
    return [files.kernel_dir / name for name in KERNEL_FILES]


def ensure(cluster: Cluster, files: Storage) -> None:
    """Make the three files here (each under a temporary name, then renamed), then put them
    where the nodes boot them: a running node keeps the file it booted, the next boot gets
    the new one."""
    own = cluster.own_kernel
    release = kernel_release(own.bzimage)
    moddir = modules_dir(own.modules, release)
    where = build_dir(cluster)
    where.mkdir(parents=True, exist_ok=True, mode=0o700)  # under state/<tag>/, root's
    remove_abandoned_work(where)
    kernel, initrd, modules = built(cluster)
    staged = where / ".bzImage.new"
    shutil.copyfile(own.bzimage, staged)
    os.replace(staged, kernel)
    staged = where / ".initramfs.cpio.new"
    names = build_initramfs(moddir, staged, build_init(cluster.cache_dir))
    os.replace(staged, initrd)
    staged = where / ".modules.img.new"
    build_modules_disk(moddir, staged)
    os.replace(staged, modules)
    for made, there in zip(built(cluster), booted(files)):
        files.put(there, made)
    log(f"kernel {release}: initramfs with {', '.join(names) or 'no modules (all built in)'}; "
        f"modules disk of {moddir}; in {files.kernel_dir}{files.where}")


def is_there(files: Storage) -> bool:
    """The three are where the nodes boot them, whole (doit's file_deps say whether the files
    made here are current, not whether someone deleted those)."""
    return all(files.complete(p) for p in booted(files))


def remove(files: Storage, dryrun: bool = False) -> None:
    """Where the nodes boot them; what was made here goes with state/<tag>/."""
    for path in booted(files):
        files.remove(path, dryrun)
