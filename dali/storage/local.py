"""A cluster's files in a directory of this machine, where its libvirtd (qemu:///system) reads
them: `dir` (DALI_DIR), with the image in image/ and your kernel in kernel/.

dali writes every file itself, and marks each with the extended attribute user.dali.cluster
(dali/marks.py): a copy, a renamed file or a symlink is not ours, and is never used, replaced or
deleted. A file is made under a fixed temporary name beside it (`.NAME.new`), marked before a
byte is in it, and renamed into place once whole: a run killed at any point leaves the old file
or the new one, and at most a marked temporary file that the next try or clean's sweep removes.
Disks and the image are root's and qemu's group's only (0640): a disk holds its guest's ssh
host keys.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import pwd
import shutil
import stat
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import libvirt

from dali import cleaning, marks
from dali.commands import run
from dali.errors import DaliError
from dali.storage.base import Storage

QEMU_USER = "libvirt-qemu"  # the user Debian's libvirt runs qemu as
FOR_QEMU = 0o664  # the seed's FAM: qemu (user libvirt-qemu) opens it read-write itself; 0644 fails
PRIVATE = 0o640
CONSOLES = Path("/var/log/libvirt/qemu")
# What fact() reads, as extended attributes of the file (the names older dalis wrote).
_FACTS = {"stamp": "user.dali.image", "features": "user.dali.image.features"}
_ZEROS = bytes(1 << 20)


class LocalDir(Storage):

    @property
    def image_dir(self) -> Path:
        return self.cluster.data_dir / "image"

    @property
    def kernel_dir(self) -> Path:
        return self.cluster.data_dir / "kernel"

    def console_log(self, node) -> Path:
        return CONSOLES / f"{getattr(node, 'name', node)}-console.log"

    # --- the place itself ---------------------------------------------------------------------

    def problem(self) -> str | None:
        return data_dir_problem(self.cluster)

    def prepare(self) -> None:
        marks.make_dir(self.cluster.data_dir, self.cluster)

    def bytes_free(self) -> int:
        fs = os.statvfs(_existing_ancestor(self.cluster.data_dir))
        return fs.f_bavail * fs.f_frsize

    # --- facts --------------------------------------------------------------------------------

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def is_ours(self, path: Path) -> bool:
        return marks.is_ours(path, self.cluster)

    def identity(self, path: Path) -> str:
        st = os.stat(path)
        return f"inode {st.st_dev}:{st.st_ino}"

    def complete(self, path: Path) -> bool:
        return self.is_ours(path)  # made whole, then renamed into place

    def size(self, path: Path) -> int | None:
        if path.is_symlink():
            raise DaliError(f"{path} is a symlink: dali uses the file itself and never what a link "
                            "points at; move the file itself there (mv)")
        try:
            return path.stat().st_size
        except OSError:
            return None

    def allocated(self, path: Path) -> int:
        try:
            return path.stat().st_blocks * 512
        except OSError:
            return 0

    def fact(self, path: Path, key: str) -> str | None:
        try:
            return os.getxattr(path, _FACTS.get(key, f"user.dali.{key}"), follow_symlinks=False).decode()
        except OSError:
            return None

    def backing(self, path: Path) -> str | None:
        return backing_file(path)

    def built_on(self, path: Path) -> tuple[list[Path], list[Path]]:
        on_it = [p for d in (self.cluster.data_dir, self.image_dir) for p in disks_built_on(path, d)]
        return [p for p in on_it if self.is_ours(p)], [p for p in on_it if not self.is_ours(p)]

    def our_files(self) -> list[Path]:
        d = self.cluster.data_dir
        return sorted(p for p in d.iterdir() if p.is_file() and self.is_ours(p)) if d.is_dir() else []

    # --- bytes --------------------------------------------------------------------------------

    def read(self, path: Path, offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            return os.pread(f.fileno(), length, offset)

    def write(self, path: Path, pieces: dict[int, bytes]) -> None:
        with open(path, "r+b") as f:
            for offset, data in pieces.items():
                os.pwrite(f.fileno(), data, offset)
            os.fsync(f.fileno())

    def nonzero_mib(self, path: Path, start: int) -> int:
        count, offset, size = 0, start, self.size(path) or 0
        with open(path, "rb") as f:
            while offset < size:
                chunk = os.pread(f.fileno(), min(len(_ZEROS), size - offset), offset)
                if not chunk:
                    break
                count += chunk != _ZEROS[:len(chunk)]
                offset += len(chunk)
        return count

    def zero(self, path: Path, start: int) -> None:
        """The blocks from `start` on are dropped (a hole reads as zeros) and allocated again:
        the file never changes size, so a run killed halfway leaves a FAM every run accepts."""
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size > start:
                _punch_hole(f.fileno(), start, size - start)
                os.posix_fallocate(f.fileno(), start, size - start)
            os.fsync(f.fileno())

    # --- making -------------------------------------------------------------------------------

    def allocate(self, path: Path, size: int, *, for_qemu: bool) -> None:
        self._refuse_foreign(path)
        self.prepare()
        with self._made(path) as tmp:
            with open(tmp, "r+b") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, size)
                except OSError as e:
                    raise DaliError(f"fallocate of {size} bytes for {path} failed ({e.strerror}): "
                                    "free some space, or set fam.size / dir elsewhere") from None
            marks.make_file_private(tmp, FOR_QEMU if for_qemu else 0o660)

    def qemu_may_use(self, path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        return st.st_gid == marks.qemu_gid() and stat.S_IMODE(st.st_mode) == FOR_QEMU

    def let_qemu_use(self, path: Path) -> None:
        if path.is_symlink():
            raise DaliError(f"{path} is a symlink: dali sets the group and mode of the FAM itself and "
                            "never of what a link points at; move the file itself there (mv)")
        # Through a descriptor of the file itself: a link put there meanwhile is never followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, -1, marks.qemu_gid())
            os.fchmod(fd, FOR_QEMU)
        finally:
            os.close(fd)

    def put(self, path: Path, data: Path | bytes, **facts: str) -> None:
        self._refuse_foreign(path)
        self._make_dirs(path)
        with self._made(path) as tmp:
            if isinstance(data, bytes):
                tmp.write_bytes(data)
            else:
                shutil.copyfile(data, tmp)  # into the same inode (its mark holds), copied in the kernel
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            marks.make_file_private(tmp, PRIVATE)
            for key, value in facts.items():
                os.setxattr(tmp, _FACTS.get(key, f"user.dali.{key}"), value.encode())

    def map_shared(self, path: Path, size: int, head: bytes) -> None:
        self._refuse_foreign(path)
        with self._made(path) as tmp:
            with open(tmp, "r+b") as f:
                f.write(head)
                f.truncate(size)
                os.fsync(f.fileno())
            marks.make_file_private(tmp, 0o660)  # qemu (libvirt-qemu, qemu's group) writes it

    def put_sparse(self, path: Path, size: int, head_of: Path, length: int) -> None:
        self._refuse_foreign(path)
        with self._made(path) as tmp:
            with open(tmp, "r+b") as out:
                out.truncate(size)
            self.copy_head(head_of, tmp, length)
            marks.make_file_private(tmp, PRIVATE)

    def copy_head(self, source: Path, target: Path, length: int) -> None:
        with open(source, "rb") as src, open(target, "r+b") as dst:
            at = 0
            while at < length:
                n = os.copy_file_range(src.fileno(), dst.fileno(), length - at, at, at)  # a reflink where it can
                if n == 0:
                    break
                at += n
            os.fsync(dst.fileno())

    def overlay(self, path: Path, backing: Path, size: int) -> None:
        self._qemu_img(path, ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing)],
                       f"qemu-img create of {path.name}")

    def copy(self, path: Path, source: Path) -> None:
        self._qemu_img(path, ["convert", "-q", "-O", "qcow2", str(source)], f"qemu-img convert to {path.name}")

    def move(self, source: Path, target: Path) -> None:
        """A rename: it happened or it did not."""
        if not self.exists(source) and self.is_ours(target):
            return
        if not self.is_ours(source):
            raise DaliError(f"{source} is not dali's: it is not moved to {target}")
        if self.exists(target):
            raise DaliError(f"{target} is there already, and {source} is not built on it (made by "
                            "hand?): move one of them away, then run doit again")
        os.chmod(source, 0o440)
        marks.mark(source, self.cluster, also=(target,))  # still ours if killed right after the rename
        source.rename(target)
        marks.mark(target, self.cluster)

    def expect(self, path: Path) -> None:
        pass  # libvirtd writes into /var/log/libvirt, or a file of state/: nothing to note down

    def dump_memory(self, dom, local: Path) -> None:
        partial = local.with_name(local.name + ".partial")
        dom.coreDumpWithFormat(str(partial), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB,
                               libvirt.VIR_DUMP_MEMORY_ONLY)
        partial.rename(local)

    @contextmanager
    def fetch(self, path: Path, offset: int, length: int):
        with tempfile.NamedTemporaryFile(prefix=".dali-fetch-", dir=self.cluster.state_dir) as f:
            with open(path, "rb") as source:
                os.copy_file_range(source.fileno(), f.fileno(), length, offset, 0)
            yield Path(f.name)

    # --- snapshots ----------------------------------------------------------------------------

    def snapshot_problem(self) -> str | None:
        return None

    @property
    def snapshots_dir(self) -> Path:
        return self.cluster.data_dir / "snapshots"

    def folders(self, path: Path) -> list[Path]:
        if not path.is_dir() or path.is_symlink():
            return []
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and self.is_ours(p))

    def make_folder(self, path: Path) -> None:
        d = self.cluster.data_dir
        try:
            parts = path.relative_to(d).parts
        except ValueError:
            raise DaliError(f"{path} is not in {d}, the cluster's data directory") from None
        for n in range(len(parts) + 1):
            folder = d.joinpath(*parts[:n])
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise self.foreign(folder)
            marks.make_dir(folder, self.cluster)
        if not self.is_ours(path):
            raise self.foreign(path)

    def remove_folder(self, path: Path, dryrun: bool = False) -> list[str]:
        if not os.path.lexists(path):
            return []
        if path.is_symlink() or not path.is_dir() or not self.is_ours(path):
            return [f"{path}: dali did not make it for this cluster"]
        left = []
        for p in sorted(path.iterdir()):
            if p.is_dir() and not p.is_symlink() and self.is_ours(p):
                left += self.remove_folder(p, dryrun)
            elif p.is_file() and not p.is_symlink() and self.is_ours(p):  # a temporary name is marked too
                if not dryrun:
                    p.unlink()
            else:
                left.append(f"{p}: dali did not make it for this cluster")
        if not left and not dryrun:
            path.rmdir()
        return left

    def clone_file(self, source: Path, target: Path) -> str:
        if not self.is_ours(source):
            raise DaliError(f"{source} is not dali's: it is not copied")
        self._refuse_foreign(target)
        with self._made(target) as tmp:
            with open(source, "rb") as src, open(tmp, "r+b") as dst:
                how = clone_or_sparse_copy(src.fileno(), dst.fileno())
                os.fsync(dst.fileno())
            marks.make_file_private(tmp, PRIVATE)
        return how

    def copy_into(self, source: Path, target: Path) -> None:
        if not self.is_ours(target):
            raise DaliError(f"{target} is not dali's: it is not overwritten")
        with open(source, "rb") as src, open(target, "r+b", opener=_no_follow) as dst:
            copy_in_place(src.fileno(), dst.fileno())

    def save_memory(self, dom, path: Path) -> None:
        self._refuse_foreign(path)
        # Made by libvirtd into a file dali made and marked first: it opens it with O_TRUNC,
        # so the inode, and the mark on it, stay; a save that fails removes it.
        with self._made(path) as tmp:
            self.virt.save_memory(dom, tmp)
            marks.make_file_private(tmp, PRIVATE)

    # --- deleting -----------------------------------------------------------------------------

    def remove(self, path: Path, dryrun: bool = False) -> None:
        if not os.path.lexists(path):
            return
        if not self.is_ours(path):
            cleaning.kept(path, "dali did not create it for this cluster", dryrun)
            return
        ours, theirs = self.built_on(path)
        if theirs:
            cleaning.kept(path, f"{', '.join(map(str, theirs))} is built on it", dryrun)
            return
        if ours and not dryrun:
            return  # our own disks on it go first; the sweep at the end of clean takes it then
        users = [] if dryrun else self.virt.domains_using(path)
        if users:
            raise DaliError(f"{path} is still used by domain {', '.join(users)}: undefine it first "
                            "(doit clean does that before it deletes disks), then run doit clean again")
        if not dryrun:
            path.unlink()
        cleaning.said("file", path, dryrun)

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def sweep(self, dryrun: bool = False) -> None:
        """Every marked file left in the data directory and in its directories of ours (image/,
        kernel/, gdb/), a disk before the disk it is built on; then those directories, once
        empty, if dali made them."""
        d = self.cluster.data_dir
        if not d.is_dir():
            return
        folders = [p for p in d.iterdir() if p.is_dir() and self.is_ours(p)] + [d]
        left = [p for f in folders for p in f.iterdir() if p.is_file() and self.is_ours(p)]
        while left:  # repeat while one goes: the one built on it goes in the next round
            for path in left:
                self.remove(path, dryrun)
            if dryrun or all(p.exists() for p in left):
                break
            left = [p for p in left if p.exists()]
        for folder in folders:
            marks.remove_dir_if_ours(folder, self.cluster, dryrun)

    # --- helpers ------------------------------------------------------------------------------

    def _refuse_foreign(self, path: Path) -> None:
        if self.exists(path) and not self.is_ours(path):
            raise self.foreign(path)

    def _make_dirs(self, path: Path) -> None:
        marks.make_dir(self.cluster.data_dir, self.cluster)
        if path.parent != self.cluster.data_dir:
            marks.make_dir(path.parent, self.cluster)

    @contextmanager
    def _made(self, path: Path):
        """A new file at `.NAME.new`, marked before anything is in it; the with-block fills
        it; then it is renamed to `path` (over our old one) and marked there."""
        tmp = path.with_name(f".{path.name}.new")
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        marks.mark(tmp, self.cluster, also=(path,))
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        marks.mark(path, self.cluster)

    def _qemu_img(self, path: Path, command: list[str], what: str) -> None:
        """A qemu-img command writing a new qcow2 at `path` (its last argument is the file)."""
        self._refuse_foreign(path)
        self.prepare()
        tmp = path.with_name(f".{path.name}.new")
        tmp.unlink(missing_ok=True)
        run(["qemu-img", *command, str(tmp)], what=what)
        marks.make_file_private(tmp, PRIVATE)
        marks.mark(tmp, self.cluster, also=(path,))
        tmp.rename(path)
        marks.mark(path, self.cluster)


# --- what a qcow2 is built on ---------------------------------------------------------------

def backing_file(path: Path) -> str | None:
    """The backing file named in a qcow2 header (bytes 8-20: offset and length), or None."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != b"QFI\xfb":
                return None
            offset, length = struct.unpack(">QI", header[8:20])
            if not offset:
                return None
            f.seek(offset)
            return f.read(length).decode(errors="replace")
    except OSError:
        return None


def disks_built_on(path: Path, where: Path) -> list[Path]:
    """The qcow2 files in `where` whose backing file is `path`."""
    if not where.is_dir():
        return []
    return sorted(p for p in where.iterdir()
                  if p.is_file() and p != path and backing_file(p) == str(path))


# --- copies that keep holes, or share blocks ---------------------------------------------------

FICLONE = 0x40049409  # ioctl(dest, FICLONE, source): the whole file's blocks shared (xfs, btrfs)
_PIECE = 64 << 10  # a block of zeros this long (or a whole MiB) is left a hole


def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW)


def data_ranges(fd: int, size: int):
    """(start, end) of each stretch of the file the filesystem says holds data (SEEK_DATA,
    SEEK_HOLE). A stretch said to be a hole reads as zeros; one said to hold data may still
    be zeros: on ext4 an allocated but never written stretch (fallocate) counts as data once
    its pages are in the page cache, read by anyone (the FAM's, by every qemu that maps it)."""
    at = 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after `at`
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        at = end


def _pieces(fd: int, start: int, end: int):
    """(offset, bytes or None for zeros) over [start, end): read a MiB at a time, each piece of
    _PIECE bytes that is all zeros given as None."""
    for at in range(start, end, len(_ZEROS)):
        chunk = os.pread(fd, min(len(_ZEROS), end - at), at)
        if chunk == _ZEROS[:len(chunk)]:
            yield at, len(chunk), None
            continue
        for off in range(0, len(chunk), _PIECE):
            piece = chunk[off:off + _PIECE]
            yield at + off, len(piece), None if piece == _ZEROS[:len(piece)] else piece


def clone_or_sparse_copy(src: int, dst: int) -> str:
    """The whole of src into the empty file dst: a reflink where the filesystem can, or else
    the data written and every hole and block of zeros (_PIECE or more) left a hole."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return "reflink"
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
            raise
    sparse_copy(src, dst)
    return "sparse copy"


def sparse_copy(src: int, dst: int) -> None:
    """The whole of src into the empty file dst, every hole and block of zeros left a hole."""
    size = os.fstat(src).st_size
    os.ftruncate(dst, size)
    for start, end in data_ranges(src, size):
        for at, _, piece in _pieces(src, start, end):
            if piece is not None:
                os.pwrite(dst, piece, at)


def _merged(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The stretches in both lists of merged ranges."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def copy_in_place(src: int, dst: int) -> None:
    """dst's bytes made src's (the same size), dst keeping its inode and every block allocated:
    src's data written over dst, then the stretches where src holds zeros (holes, blocks of
    zeros) and dst may hold data punched out and allocated again. A real copy, never a
    reflink: qemu writes into dst (the FAM), which must not need new blocks to do so."""
    size = os.fstat(dst).st_size
    if os.fstat(src).st_size != size:
        raise DaliError(f"a copy of {os.fstat(src).st_size} bytes cannot become a file of {size} bytes")
    had_data = _merged(data_ranges(dst, size))
    zeros, at = [], 0
    for start, end in data_ranges(src, size):
        zeros.append((at, start))
        for offset, length, piece in _pieces(src, start, end):
            if piece is None:
                zeros.append((offset, offset + length))
            else:
                os.pwrite(dst, piece, offset)
        at = end
    zeros.append((at, size))
    for start, end in _overlap(_merged(z for z in zeros if z[0] < z[1]), had_data):
        _punch_hole(dst, start, end - start)
    os.posix_fallocate(dst, 0, size)  # every block its own and allocated, holes included
    os.fsync(dst)


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """fallocate(PUNCH_HOLE | KEEP_SIZE): the blocks are freed and read as zeros. Where the
    filesystem cannot, zeros are written instead."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    at = offset
    while at < offset + length:
        at += os.pwrite(fd, _ZEROS[:min(len(_ZEROS), offset + length - at)], at)


# --- can the files live there? (preflight) ------------------------------------------------------

def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def qemu_cannot_traverse(path: Path) -> Path | None:
    """The first directory on the way to `path` that the qemu user may not enter, if any."""
    try:
        user = pwd.getpwnam(QEMU_USER)
    except KeyError:
        return None  # no such user: libvirt is not Debian's; nothing we can check
    groups = set(os.getgrouplist(QEMU_USER, user.pw_gid))  # as the kernel will see them
    for d in [*reversed(path.parents), path]:
        if not d.exists():
            break
        st = d.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


def writable_by_others(path: Path) -> Path | None:
    """The first directory on the way to `path` (path included, if it exists) that a user other
    than root could change: not owned by root, or writable by a group or by others. A sticky
    directory (like /tmp) is fine on the way, not as the data directory itself: there, another
    user could put a symlink at a name dali is about to use, and root would follow it."""
    me = os.geteuid()
    for d in [*reversed(path.parents), path]:
        if not d.exists():
            break
        st = d.lstat()
        if stat.S_ISLNK(st.st_mode):
            st = d.stat()
        shared = st.st_mode & (stat.S_IWOTH | (stat.S_IWGRP if st.st_gid != 0 else 0))
        sticky_on_the_way = st.st_mode & stat.S_ISVTX and d != path
        if st.st_uid not in (0, me) or (shared and not sticky_on_the_way):
            return d
    return None


def other_cluster_in(cluster) -> str | None:
    """Another dali cluster that owns the data directory or a file in it, described for a
    message: two clusters never share a directory (nor base.qcow2, frozen.qcow2, the FAM)."""
    d = cluster.data_dir
    if not d.is_dir():
        return None
    image = d / "image"
    for path in [d, *d.iterdir(), *(image.iterdir() if image.is_dir() else [])]:
        found = marks.owner_of(path)
        if found is not None and found.get("cluster") != cluster.id:
            return f"{path} belongs to {marks.describe(found)}"
    return None


def data_dir_problem(cluster) -> str | None:
    d = cluster.data_dir
    setting = "dir (DALI_DIR)"
    base = _existing_ancestor(d)
    if not os.access(base, os.W_OK | os.X_OK):
        return (f"{setting}: cannot create or write {d} ({base} is not writable): "
                "pick a writable place or fix its permissions")
    shared = writable_by_others(d)
    if shared:
        return (f"{setting}: {shared} can be changed by users other than root, who could swap "
                f"dali's files under {d} for symlinks: chown root and chmod go-w {shared}, or "
                "pick another place")
    other = other_cluster_in(cluster)
    if other:
        return f"{setting}: {other}: give each cluster its own dir"
    blocked = qemu_cannot_traverse(d)
    if blocked:
        return (f"{setting}: {blocked} is not searchable by user {QEMU_USER}, so qemu could not "
                f"open the FAM and disks under {d}: chmod o+x {blocked}, or pick another place")
    if not cluster.fam_path.exists():
        return _filesystem_problem(base, setting) or _no_room_for_the_fam(cluster, base)
    return None


def _no_room_for_the_fam(cluster, base: Path) -> str | None:
    """The FAM is allocated whole (fallocate): refused here, not by a failed fallocate after
    the network and the data directory were made."""
    fs = os.statvfs(base)
    free = fs.f_bavail * fs.f_frsize
    if cluster.fam_size > free:
        return (f"fam.size: {cluster.fam_size} bytes do not fit in the {free} bytes free where "
                f"the FAM goes ({base}): lower fam.size, free space, or set dir (DALI_DIR) elsewhere")
    return None


def _filesystem_problem(d: Path, setting: str) -> str | None:
    """The FAM is made with fallocate and every file we make carries an xattr: try both."""
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".dali-probe-") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, 1 << 20)
            except OSError as e:
                return (f"{setting}: fallocate fails on the filesystem of {d} ({e.strerror}), "
                        "so the FAM cannot be made there: pick a directory on ext4, xfs or btrfs")
            try:
                os.setxattr(f.name, marks.XATTR, b"probe")
            except OSError as e:
                return (f"{setting}: the filesystem of {d} takes no user extended attributes "
                        f"({e.strerror}), which dali uses to mark its files: pick ext4, xfs or btrfs")
    except OSError as e:
        return f"{setting}: cannot write in {d} ({e.strerror}): fix its permissions"
    return None
