"""How dali marks what it creates, so that cleaning removes only what dali made.

Files carry the extended attribute user.dali.cluster = <tag>; it needs no record that could be
lost with state/. libvirt objects carry <metadata><dali:cluster tag="..."/></metadata>, which
dali/virt.py checks before it touches an object.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from dali.errors import DaliError

XATTR = "user.dali.cluster"
MARK_NS = "https://dali.invalid/xmlns/cluster/1"  # a name, never fetched
MARK_ELEMENT = f"{{{MARK_NS}}}cluster"


# --- files ------------------------------------------------------------------------------------

def mark(path: Path, tag: str) -> None:
    try:
        os.setxattr(path, XATTR, tag.encode())
    except OSError as e:
        raise DaliError(f"cannot mark {path} as dali's ({e.strerror}): put dir / DALI_DIR on a "
                        "filesystem with user extended attributes (ext4, xfs, btrfs)") from None


def is_ours(path: Path, tag: str) -> bool:
    try:
        return os.getxattr(path, XATTR) == tag.encode()
    except OSError:
        return False


def remove_if_ours(path: Path, tag: str, log, dryrun: bool = False) -> None:
    """Delete path if dali made it for this cluster; say so when a foreign file is left alone."""
    if not path.exists():
        return
    if not is_ours(path, tag):
        log(f"left {path} in place: dali did not create it")
    elif dryrun:
        log(f"would remove {path}")
    else:
        path.unlink()


# --- libvirt objects --------------------------------------------------------------------------

def mark_of(xml: str) -> str | None:
    """The cluster tag in a libvirt object's dali mark, or None if it carries none."""
    node = ET.fromstring(xml).find(f"metadata/{MARK_ELEMENT}")
    return None if node is None else node.get("tag")
