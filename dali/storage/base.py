"""The interface every place for a cluster's files implements (dali/storage/__init__.py says
which places there are, and which a cluster gets)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path

from dali.cluster import Cluster, Node
from dali.errors import DaliError
from dali.virt import Libvirt


class Storage(ABC):
    """The files of one cluster, wherever they live. `where` is said after a path in messages
    ("" here, " on qemu+ssh://lab/system" there)."""

    where: str = ""

    def __init__(self, cluster: Cluster, virt: Libvirt):
        self.cluster, self.virt = cluster, virt

    # --- the layout ---------------------------------------------------------------------------

    @property
    @abstractmethod
    def image_dir(self) -> Path:
        """Where the built image lives: base.qcow2, vmlinuz, initrd.img."""

    @property
    @abstractmethod
    def kernel_dir(self) -> Path:
        """Where your kernel lives as the nodes boot it: bzImage, initramfs.cpio, modules.img."""

    @abstractmethod
    def console_log(self, node: Node | str) -> Path:
        """Where libvirt's virtlogd writes the node's serial console."""

    # --- the place itself ---------------------------------------------------------------------

    @abstractmethod
    def problem(self) -> str | None:
        """Before anything is made (preflight): why the files cannot live there, as one line
        naming the fix; None if they can."""

    @abstractmethod
    def prepare(self) -> None:
        """The place made and marked ours, if it is not yet (a directory, a pool)."""

    @abstractmethod
    def bytes_free(self) -> int:
        """Bytes free where the files live."""

    # --- facts about a file -------------------------------------------------------------------

    @abstractmethod
    def exists(self, path: Path) -> bool:
        """Whether anything is at `path`, dali's or not."""

    @abstractmethod
    def is_ours(self, path: Path) -> bool:
        """Whether the file at `path` is one dali made for this cluster."""

    def have(self, path: Path) -> bool:
        """Whether our file is at `path`: False if nothing is; refused in one line if a file
        dali did not make is (a copy put back, a stranger's): it is never used or replaced."""
        if not self.exists(path):
            return False
        if not self.is_ours(path):
            raise self.foreign(path)
        return True

    def foreign(self, path: Path) -> DaliError:
        return DaliError(f"{path}{self.where} exists but dali did not make it for this cluster (a "
                         "copy, a renamed file or someone else's): move it away, then run doit again")

    @abstractmethod
    def identity(self, path: Path) -> str:
        """What tells this file from another made later at the same path."""

    @abstractmethod
    def complete(self, path: Path) -> bool:
        """Our file is there and whole: not a copy or an upload a killed run cut short."""

    @abstractmethod
    def size(self, path: Path) -> int | None:
        """The file's size in bytes (what its reader sees), or None if there is none."""

    @abstractmethod
    def allocated(self, path: Path) -> int:
        """Bytes the file takes where it lives (a sparse or linked disk: what it wrote)."""

    @abstractmethod
    def fact(self, path: Path, key: str) -> str | None:
        """What dali wrote down about our file when it made it (`stamp`: what the image was
        copied from; `features`: what its guest side can do), or None."""

    @abstractmethod
    def backing(self, path: Path) -> str | None:
        """The path a qcow2 file is built on, as its header says; None for a file built on nothing."""

    @abstractmethod
    def built_on(self, path: Path) -> tuple[list[Path], list[Path]]:
        """The files where the cluster's files live that are built on `path`: (ours, not ours).
        A user's copy of a linked clone needs the frozen disk as much as the clone did."""

    @abstractmethod
    def our_files(self) -> list[Path]:
        """Every file of ours in the data directory (cheaply: names and marks)."""

    # --- bytes ---------------------------------------------------------------------------------

    @abstractmethod
    def read(self, path: Path, offset: int, length: int) -> bytes:
        """Bytes of the file (fewer at its end)."""

    @abstractmethod
    def write(self, path: Path, pieces: dict[int, bytes]) -> None:
        """Overwrite bytes of the file in place, durably ({offset: bytes}). The nodes map the
        FAM shared: what is written here every node sees at once."""

    @abstractmethod
    def nonzero_mib(self, path: Path, start: int) -> int:
        """How many MiB of the file from `start` hold anything but zeros."""

    @abstractmethod
    def zero(self, path: Path, start: int) -> None:
        """Zeros from `start` to the end, the file keeping its size and allocation. A place that
        can only zero a whole file zeros it all: the caller writes back what lies below start."""

    # --- making --------------------------------------------------------------------------------

    @abstractmethod
    def allocate(self, path: Path, size: int, *, for_qemu: bool) -> None:
        """A new raw file of `size` bytes, all of it allocated (qemu never meets a full disk
        halfway). for_qemu: the qemu process opens it read-write by itself (the FAM, in the
        seed's style a file libvirt does not label), so it gets qemu's group and 0664."""

    @abstractmethod
    def qemu_may_use(self, path: Path) -> bool:
        """Whether qemu can open the file as allocate(for_qemu=True) leaves it."""

    @abstractmethod
    def let_qemu_use(self, path: Path) -> None:
        """Give an existing file (ours, or a FAM made by hand as in the seed) what qemu needs."""

    @abstractmethod
    def put(self, path: Path, data: Path | bytes, **facts: str) -> None:
        """Our file at `path` replaced whole by the bytes of a file of this machine (or those
        bytes), readable by root and qemu's group only; `facts` written down with it (fact()).
        A node that has the old one open keeps reading it; its next boot gets the new one."""

    @abstractmethod
    def put_sparse(self, path: Path, size: int, head_of: Path, length: int) -> None:
        """Our file at `path` made whole: `size` bytes, the first `length` bytes of our file
        `head_of` at its start, the rest a hole (the FAM's golden copy)."""

    @abstractmethod
    def map_shared(self, path: Path, size: int, head: bytes) -> None:
        """Our file at `path` made new: `size` bytes, `head` at its start, the rest a hole, that
        qemu opens read-write and maps shared from every node (the coherence model)."""

    @abstractmethod
    def copy_head(self, source: Path, target: Path, length: int) -> None:
        """The first `length` bytes of `source` written over those of `target`, in place, durably."""

    @abstractmethod
    def overlay(self, path: Path, backing: Path, size: int) -> None:
        """A new qcow2 whose unwritten blocks come from `backing` (made in milliseconds)."""

    @abstractmethod
    def copy(self, path: Path, source: Path) -> None:
        """A new standalone qcow2 holding the whole chain below `source`."""

    @abstractmethod
    def move(self, source: Path, target: Path) -> None:
        """`source` becomes `target`, read-only from then on (the frozen disk); no file is at
        `source` afterwards. Run again after a kill, it finishes what was begun."""

    @abstractmethod
    def expect(self, path: Path) -> None:
        """libvirtd is about to make `path` for us (a console log, a memory dump): where marks
        are kept apart from the files, it is written down as ours first, so clean takes it."""

    @abstractmethod
    def dump_memory(self, dom, local: Path) -> None:
        """The domain's memory, as libvirtd writes it (kdump, compressed), into the file
        `local` of this machine, made whole or not at all."""

    @abstractmethod
    def fetch(self, path: Path, offset: int, length: int) -> AbstractContextManager[Path]:
        """A file of this machine holding `length` bytes of the file from `offset`, for a host
        program that reads files (blkid), for the length of a with-block."""

    # --- snapshots (dali/snapshot.py, docs/snapshots.md) ----------------------------------------

    @abstractmethod
    def snapshot_problem(self) -> str | None:
        """Why the cluster's snapshots cannot be kept where its files live, as one line naming
        what to do; None if they can."""

    @property
    @abstractmethod
    def snapshots_dir(self) -> Path:
        """Where the snapshots live, a folder each, beside the FAM and the disks (the same
        filesystem: a copy there can share their blocks)."""

    @abstractmethod
    def folders(self, path: Path) -> list[Path]:
        """The folders of ours in the folder `path`, by name; none if there is no such folder."""

    @abstractmethod
    def make_folder(self, path: Path) -> None:
        """A folder of ours at `path`, and the folders of ours between it and the data
        directory; one already there is left as it is."""

    @abstractmethod
    def remove_folder(self, path: Path, dryrun: bool = False) -> list[str]:
        """Our folder, with every file and folder of ours in it, whole or cut short (the
        temporary names dali gives files it makes there are marked too); a file of someone
        else's is left in place, and so are the folders holding it: what was left, one line
        each, "path: why" (none: the folder is gone)."""

    @abstractmethod
    def clone_file(self, source: Path, target: Path) -> str:
        """Our file at `target` made whole as a copy of our file `source`: its blocks shared
        where the filesystem can (a reflink, which costs nothing until either is written), or
        else its holes and the blocks of zeros in it left as holes; root's and qemu's group's
        only. Says how: "reflink" or "sparse copy"."""

    @abstractmethod
    def copy_into(self, source: Path, target: Path) -> None:
        """Every byte of our file `target` made that of `source` (the same size), in place: its
        inode, mark, group and mode stay, and every block of it is its own and allocated (qemu
        maps the FAM shared, and must never meet a full disk writing it). No moment of it holds
        zeros where both have data: the data is written first, the holes made after. Run again
        after a kill, it finishes."""

    @abstractmethod
    def save_memory(self, dom, path: Path) -> None:
        """A paused domain's memory and device state, as libvirtd saves it (virDomainSave's
        format, which virDomainRestore reads), into our file `path`, made whole or not at all;
        the domain stays paused, its qemu running."""

    # --- deleting ------------------------------------------------------------------------------

    @abstractmethod
    def remove(self, path: Path, dryrun: bool = False) -> None:
        """`doit clean`: delete our file, decided from facts checked now: a file of someone
        else's is left in place and said so; one a libvirt domain still names stops the clean;
        one that a file of someone else's is built on is kept, and so is what it is built on."""

    @abstractmethod
    def discard(self, path: Path) -> None:
        """Delete our file to make it again at once under the same name (a node's disk put
        back by reset:disks): the domains that name it are no reason to keep it."""

    @abstractmethod
    def sweep(self, dryrun: bool = False) -> None:
        """The end of `doit clean`: every file of ours still there, then the place itself if
        dali made it and nothing else is in it."""
