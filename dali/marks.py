"""How dali marks what it creates, so that it only ever deletes what it provably made.

A mark names one cluster, by its id (dali/cluster.py: the checkout, the tag and the data
directory together), never just a tag: two checkouts or two DALI_DIRs with the same tag are two
clusters, and neither may touch the other's objects.

Files carry the extended attribute user.dali.cluster: the cluster id, the file's inode and the
path(s) it was made at. A copy (`cp -a` keeps xattrs, not the inode) or a renamed file (`mv FAM
FAM.keep` keeps the inode, not the path) is not ours any more, so clean leaves it alone. A
symlink is never ours: the mark is read without following it. Directories dali makes carry the
same mark, so a directory the user made beforehand is never removed.

libvirt objects carry <metadata><dali:cluster tag=.. id=.. checkout=.. dir=../></metadata>,
which dali/virt.py checks before it touches an object.
"""

from __future__ import annotations

import grp
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from dali import cleaning
from dali.errors import DaliError

XATTR = "user.dali.cluster"
MARK_NS = "https://dali.invalid/xmlns/cluster/1"  # a name, never fetched
MARK_ELEMENT = f"{{{MARK_NS}}}cluster"
QEMU_GROUP = "libvirt-qemu"  # qemu runs as libvirt-qemu; its group may read what dali makes for it


# --- files ------------------------------------------------------------------------------------

def mark(path: Path, cluster, *, also: tuple[Path, ...] = ()) -> None:
    """Mark `path` as made by `cluster` (a dali.cluster.Cluster). `also`: the paths it will be
    renamed to, so a run killed between the rename and the next mark still knows the file."""
    st = os.stat(path, follow_symlinks=False)
    value = {"cluster": cluster.id, "tag": cluster.tag, "checkout": cluster.mark["checkout"],
             "inode": st.st_ino, "paths": [str(path), *map(str, also)]}
    try:
        os.setxattr(path, XATTR, json.dumps(value).encode(), follow_symlinks=False)
    except OSError as e:
        raise DaliError(f"cannot mark {path} as dali's ({e.strerror}): put dir / DALI_DIR on a "
                        "filesystem with user extended attributes (ext4, xfs, btrfs)") from None


def owner_of(path: Path) -> dict | None:
    """The mark of the file at `path` (cluster id, tag, checkout), if the mark is this very
    file's (same inode, made at this path); None for anything else, a symlink included."""
    try:
        value = json.loads(os.getxattr(path, XATTR, follow_symlinks=False))
        st = os.stat(path, follow_symlinks=False)
        if value["inode"] == st.st_ino and str(path) in value["paths"]:
            return value
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def is_ours(path: Path, cluster) -> bool:
    found = owner_of(path)
    return found is not None and found.get("cluster") == cluster.id


def make_file_private(path: Path, mode: int = 0o640) -> None:
    """Readable by root and qemu's group only (a node disk, the image): qemu needs no more,
    and a disk holds the guest's ssh host keys."""
    os.chown(path, -1, qemu_gid())
    os.chmod(path, mode)


def qemu_gid() -> int:
    try:
        return grp.getgrnam(QEMU_GROUP).gr_gid
    except KeyError:
        raise DaliError(f"group {QEMU_GROUP} does not exist: install libvirt-daemon-system "
                        "(scripts/setup)") from None


def make_dir(path: Path, cluster) -> None:
    """Create a directory qemu's group can enter, marked as ours; an existing one is left as it
    is (it may be the user's). Missing parents are made plain (0755) and never removed."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Made under a temporary name and renamed once complete: a run killed halfway must not leave
    # a directory without qemu's group, mode or mark (the next preflight would rightly refuse it).
    partial = path.with_name(f".{path.name}.dali-new")
    try:
        partial.rmdir()  # left by a killed run; rmdir removes nothing but an empty directory
    except FileNotFoundError:
        pass
    except OSError as e:
        raise DaliError(f"{partial} is left from an interrupted run and is not empty "
                        f"({e.strerror}): look inside, then remove it") from None
    partial.mkdir(mode=0o750)
    os.chown(partial, -1, qemu_gid())
    os.chmod(partial, 0o750)  # mkdir's mode went through the umask
    mark(partial, cluster, also=(path,))
    os.rename(partial, path)
    mark(path, cluster)


def remove_dir_if_ours(path: Path, cluster, dryrun: bool = False) -> None:
    """Remove a directory dali made once it is empty; a directory the user made stays. With
    dryrun, what a clean would do once the files of ours in it were gone."""
    if not path.is_dir():
        return
    if not is_ours(path, cluster):
        cleaning.kept(path, "dali did not create it", dryrun)
        return
    held = list(path.iterdir())
    if [p for p in held if not is_ours(p, cluster)]:
        cleaning.kept(path, "it holds files dali did not create for this cluster", dryrun)
    elif held and not dryrun:
        pass  # ours, kept for now (a disk built on another goes first): clean's sweep takes them
    else:
        if not dryrun:
            path.rmdir()
        cleaning.said("directory", path, dryrun)


# --- libvirt objects --------------------------------------------------------------------------

def mark_of(xml: str) -> dict | None:
    """The attributes of a libvirt object's dali mark (tag, id, checkout, dir), or None."""
    node = ET.fromstring(xml).find(f"metadata/{MARK_ELEMENT}")
    return None if node is None else dict(node.attrib)


def describe(found: dict | None) -> str:
    """Whose an object is, for a message: "dali cluster 'ivp' of checkout X with dir Y"."""
    if found is None:
        return "someone else (it has no dali mark)"
    if not (found.get("id") or found.get("cluster")):
        return f"dali cluster '{found.get('tag')}' of an older dali (no cluster id)"
    where = f" with dir {found['dir']}" if found.get("dir") else ""
    return f"dali cluster '{found.get('tag')}' of checkout {found.get('checkout')}{where}"
