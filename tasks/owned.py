"""Files dali creates on the host carry its mark, so cleaning removes only what dali made.

The mark is an extended attribute, user.dali.cluster = <tag>: it travels with the file (a
renamed disk stays ours) and needs no record that could be lost with state/. libvirt objects
carry the same mark in their <metadata> (tasks/virt.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from tasks.errors import DaliError

XATTR = "user.dali.cluster"


def mark(path: Path, tag: str) -> None:
    try:
        os.setxattr(path, XATTR, tag.encode())
    except OSError as e:
        raise DaliError(f"cannot mark {path} as dali's ({e.strerror}): put dir / DALI_DIR on a "
                        "filesystem with user extended attributes (ext4, xfs, btrfs)")


def is_ours(path: Path, tag: str) -> bool:
    try:
        return os.getxattr(path, XATTR) == tag.encode()
    except OSError:
        return False


def remove_if_ours(path: Path, tag: str, log) -> None:
    """Delete path if dali made it for this cluster; say so when a foreign file is left alone."""
    if not path.exists():
        return
    if is_ours(path, tag):
        path.unlink()
    else:
        log(f"left {path} in place: dali did not create it")
