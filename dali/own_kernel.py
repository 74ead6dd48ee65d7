"""The user's own kernel (kernel.path, kernel.modules), made bootable by every node.

Into DIR/kernel/ go a copy of the bzImage (libvirt relabels the files a domain boots, and the
user may rebuild while nodes run), an initramfs made for that kernel and a disk of its modules
(dali/initramfs.py builds both). Each is built under a temporary name, marked, then renamed:
a running node keeps the inode it booted, the next boot gets the new one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dali import disks, marks, remote
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.scratch import remove_abandoned_work
from dali.initramfs import (MODULES_DISK_SERIAL, build_init, build_initramfs, build_modules_disk,
                              kernel_release, modules_dir)
from dali.pool import Pool
from dali.reporter import log
from dali.virt import Libvirt

__all__ = ["MODULES_DISK_SERIAL", "ensure", "inputs", "remove"]


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


def _install(cluster: Cluster, staged: Path, final: Path) -> None:
    if cluster.remote:  # files of state/<tag>/, uploaded from there: no mark, no qemu group
        os.replace(staged, final)
        return
    marks.make_file_private(staged)
    marks.mark(staged, cluster, also=(final,))
    os.replace(staged, final)
    marks.mark(final, cluster)


def ensure(cluster: Cluster, virt: Libvirt) -> None:
    """Make the three files (in kernel_build_dir); on a remote host, upload them to the
    cluster's pool, where the nodes boot them."""
    own = cluster.own_kernel
    release = kernel_release(own.bzimage)
    moddir = modules_dir(own.modules, release)
    where = cluster.kernel_build_dir
    if cluster.remote:
        where.mkdir(parents=True, exist_ok=True, mode=0o700)  # under state/<tag>/, root's
    else:
        marks.make_dir(cluster.data_dir, cluster)
        marks.make_dir(where, cluster)
    remove_abandoned_work(where)
    kernel, initrd, modules = cluster.kernel_files
    for final in cluster.kernel_files:
        if not cluster.remote and os.path.lexists(final) and not marks.is_ours(final, cluster):
            raise DaliError(f"{final} exists but dali did not make it for this cluster: move it away")
    staged = where / ".bzImage.new"
    shutil.copyfile(own.bzimage, staged)
    _install(cluster, staged, kernel)
    staged = where / ".initramfs.cpio.new"
    names = build_initramfs(moddir, staged, build_init(cluster.cache_dir))
    _install(cluster, staged, initrd)
    staged = where / ".modules.img.new"
    build_modules_disk(moddir, staged)
    _install(cluster, staged, modules)
    if cluster.remote:
        pool = Pool(cluster, virt)
        pool.ensure()
        for made, there in zip(cluster.kernel_files, (cluster.kernel, cluster.initrd, cluster.modules_disk)):
            # A running node keeps the file it booted (deleted under it, as after a rename
            # here); the next boot gets the new one.
            pool.upload(there.name, made)
        log(f"uploaded bzImage, initramfs.cpio and modules.img to {cluster.uri}")
    log(f"kernel {release}: initramfs with {', '.join(names) or 'no modules (all built in)'}; "
        f"modules disk of {moddir}")


def is_there(cluster: Cluster, virt: Libvirt) -> bool:
    """On a remote host: the three volumes are in the pool (doit's file_deps say whether the
    files made here are current, not whether someone deleted the volumes there)."""
    pool = Pool(cluster, virt)
    return all(pool.volume(p.name) is not None for p in (cluster.kernel, cluster.initrd, cluster.modules_disk))


def remove(cluster: Cluster, virt: Libvirt, dryrun: bool = False) -> None:
    if cluster.remote:  # the volumes there; what was made here goes with state/<tag>/
        for path in (cluster.kernel_dir / name for name in ("bzImage", "initramfs.cpio", "modules.img")):
            remote.remove_volume(cluster, virt, path, dryrun)
        return
    for path in (cluster.kernel_dir / name for name in ("bzImage", "initramfs.cpio", "modules.img")):
        disks.remove_file(cluster, virt, path, dryrun)
    marks.remove_dir_if_ours(cluster.kernel_dir, cluster, dryrun)
