"""A cluster's files as dali reaches them, for the tests without a real libvirtd."""

from __future__ import annotations

from dali.storage.local import LocalDir
from dali.virt import Libvirt


def local_files(cluster) -> LocalDir:
    """The cluster's files in its data directory (dali/storage/local.py); its libvirt, where a
    deletion asks which domains still use a file, libvirt's in-memory test driver."""
    return LocalDir(cluster, Libvirt("test:///default", cluster.id))
