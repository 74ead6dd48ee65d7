"""Where a cluster's files live, decided once: one interface, one implementation per place.

Every file of a cluster (the FAM and its golden copy, the image, the nodes' disks and the
frozen disk, the identity disks, your kernel, the shared disk of --compare-disk, a console
log, a memory dump) is made, read, written and deleted through a Storage, which dodo.py opens
once per run (`of`) and hands to every stage. The stages and the library above this say
*what* (the FAM is allocated whole, a clone is an overlay on the frozen disk); a Storage says
*how* it is done where the files are:

    place                      implementation       made by    marks               chosen when
    a directory here           storage/local.py     dali       an xattr per file   libvirtd sees this machine's files
    a libvirt storage pool     storage/pool.py      libvirtd   the pool's marker   the uri names another host or a
                                                                                     daemon's own socket

A third place (say, an NFS export both machines mount) is a third module implementing Storage,
and one line in `of`. Nothing else in dali asks where the files are.

Files are named by their path as the nodes' libvirtd sees it: a file of the data directory
(`cluster.fam_path`, `cluster.disk(node)`), or of `image_dir` / `kernel_dir`, which are part
of the layout a Storage decides. Every method that makes something makes it whole or not at
all, so a run killed anywhere leaves what the next run finishes (docs/reliability.md).
"""

from __future__ import annotations

from dali.cluster import Cluster, is_remote
from dali.storage.base import Storage
from dali.virt import Libvirt

__all__ = ["Storage", "of"]


def of(cluster: Cluster, virt: Libvirt) -> Storage:
    """The cluster's Storage: files of this machine where its libvirtd reads this machine's
    files, a storage pool of its libvirtd otherwise (docs/remote.md)."""
    if not is_remote(cluster.uri):
        from dali.storage.local import LocalDir
        return LocalDir(cluster, virt)
    from dali.storage.pool import LibvirtPool
    return LibvirtPool(cluster, virt)
