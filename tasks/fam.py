"""Stage 2: the FAM, the file behind the shared NVDIMM (seed step 2).

Made once with fallocate, group libvirt-qemu, mode 0664 (qemu runs as libvirt-qemu and opens
it read-write; 0644 fails with "can't open backing store ... Permission denied"). An existing
FAM is never truncated or recreated: it holds the shared device's contents.
"""

from __future__ import annotations

import grp
import os
import stat

from tasks import errors, owned
from tasks.config import Cluster
from tasks.errors import DaliError
from tasks.reporter import log

GROUP = "libvirt-qemu"
MODE = 0o664


def _gid() -> int:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        raise DaliError(f"group {GROUP} does not exist: install libvirt-daemon-system (scripts/setup)")


def fam_is_ready(cluster: Cluster) -> bool:
    try:
        st = cluster.fam_path.stat()
    except FileNotFoundError:
        return False
    return (st.st_size == cluster.fam_size and st.st_gid == _gid()
            and stat.S_IMODE(st.st_mode) == MODE)


def ensure_fam(cluster: Cluster) -> None:
    fam = cluster.fam_path
    cluster.data_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    if fam.exists():
        size = fam.stat().st_size
        if size != cluster.fam_size:
            raise DaliError(f"{fam} is {size} bytes but fam.size asks for {cluster.fam_size}: "
                            "dali never resizes a FAM (it holds the shared device's data); set "
                            "fam.size to its size, or move the file away to start afresh")
    else:
        # Allocate under a temporary name: an interrupted run leaves no half-made FAM behind.
        tmp = fam.with_name(".FAM.new")
        with open(tmp, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, cluster.fam_size)
            except OSError as e:
                tmp.unlink()
                raise DaliError(f"fallocate of {cluster.fam_size} bytes for {fam} failed "
                                f"({e.strerror}): free space or set fam.size / dir")
        owned.mark(tmp, cluster.tag)
        os.chown(tmp, -1, _gid())
        os.chmod(tmp, MODE)
        os.rename(tmp, fam)  # never replaces: we only get here if FAM does not exist
        log(f"created {fam}: {cluster.fam_size} bytes, group {GROUP}, mode {MODE:o}")
        return
    # An existing FAM (ours, or the seed's hand-made one) gets the group and mode qemu needs.
    os.chown(fam, -1, _gid())
    os.chmod(fam, MODE)


def task(cluster: Cluster) -> dict:
    def remove():
        owned.remove_if_ours(cluster.fam_path, cluster.tag, log)

    return {
        "actions": [errors.action(lambda: ensure_fam(cluster))],
        "uptodate": [errors.uptodate(lambda: fam_is_ready(cluster))],
        "task_dep": ["preflight"],
        "clean": [errors.action(remove)],
        "verbosity": 2,
    }
