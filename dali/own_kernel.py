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

from dali import disks, marks
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.scratch import remove_abandoned_work
from dali.initramfs import (MODULES_DISK_SERIAL, build_init, build_initramfs, build_modules_disk,
                              kernel_release, modules_dir)
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
    marks.make_file_private(staged)
    marks.mark(staged, cluster, also=(final,))
    os.replace(staged, final)
    marks.mark(final, cluster)


def ensure(cluster: Cluster) -> None:
    own = cluster.own_kernel
    release = kernel_release(own.bzimage)
    moddir = modules_dir(own.modules, release)
    marks.make_dir(cluster.data_dir, cluster)
    marks.make_dir(cluster.kernel_dir, cluster)
    remove_abandoned_work(cluster.kernel_dir)
    for final in (cluster.kernel, cluster.initrd, cluster.modules_disk):
        if os.path.lexists(final) and not marks.is_ours(final, cluster):
            raise DaliError(f"{final} exists but dali did not make it for this cluster: move it away")
    staged = cluster.kernel_dir / ".bzImage.new"
    shutil.copyfile(own.bzimage, staged)
    _install(cluster, staged, cluster.kernel)
    staged = cluster.kernel_dir / ".initramfs.cpio.new"
    names = build_initramfs(moddir, staged, build_init(cluster.cache_dir))
    _install(cluster, staged, cluster.initrd)
    staged = cluster.kernel_dir / ".modules.img.new"
    build_modules_disk(moddir, staged)
    _install(cluster, staged, cluster.modules_disk)
    log(f"kernel {release}: initramfs with {', '.join(names) or 'no modules (all built in)'}; "
        f"modules disk of {moddir}")


def remove(cluster: Cluster, virt: Libvirt, dryrun: bool = False) -> None:
    for path in (cluster.kernel_dir / name for name in ("bzImage", "initramfs.cpio", "modules.img")):
        disks.remove_file(cluster, virt, path, dryrun)
    marks.remove_dir_if_ours(cluster.kernel_dir, cluster, dryrun)
