"""The initramfs every node boots (dali's own /init), and for the user's own kernel, its
modules as a disk.

The kernel developer's loop: `make bzImage modules && make modules_install INSTALL_MOD_PATH=X`,
then every node boots arch/x86/boot/bzImage with X/lib/modules/<release>. What this needs:

1. An initramfs that can mount the root disk (ext4 on virtio-blk, /dev/vda) with *that* kernel,
   whatever it builds in or as modules. build_initramfs() writes one on the host (the newc cpio
   written by Python itself, uncompressed: no CONFIG_RD_* needed, nothing to decompress under
   TCG): a static /init (initramfs_init.c, compiled once per checkout with gcc -static, the one
   program dali builds) plus just the .ko files that virtio_pci,
   virtio_blk and ext4 need (those that are not built in), in dependency order. About 1 MB, made in
   well under a second, with nothing from the guest image involved.
2. The rest of the modules in the guest as /lib/modules/<release>, so that udev and modprobe load
   nfit, nd_pmem, dax_pmem, ... build_modules_disk() makes a read-only ext4 image of them with
   `mkfs.ext4 -d` (no loop mount), after `depmod -b` on a hard-linked staging copy (the user's
   tree is never written). Every node attaches it read-only with <serial>dali-modules</serial>;
   the /init mounts it on /lib/modules before starting systemd, so it is there from PID 1 on.

Plain functions of plain values, like image_builder.py.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import struct
import subprocess
from pathlib import Path

from dali.commands import run
from dali.errors import DaliError
from dali.scratch import work_dir

INIT_SOURCE = Path(__file__).with_name("initramfs_init.c")

# What mounting ext4 on virtio-blk needs, in the order modprobe would load it. Names a kernel
# builds in (modules.builtin) are skipped. The crc32c drivers are there because ext4 asks the
# crypto API for "crc32c" (metadata_csum) and, with no modprobe in the initramfs, a modular crc32c
# would never be found: ext4's MODULE_SOFTDEP("pre: crc32c") made explicit.
ROOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "crc32c_intel", "ext4")
REQUIRED = ("virtio_pci", "virtio_blk", "ext4")

MODULES_DISK_SERIAL = "dali-modules"
_COMPRESSED = {".xz": "xz", ".zst": "zstd", ".gz": "gzip"}


# --- the kernel and its modules directory ---------------------------------------------------

def kernel_version(bzimage: Path) -> str:
    """The version string built into an x86 bzImage, read from its setup header: the release
    (`uname -r`), then the build's number, host and date ("6.1.0-50-amd64 (debian-kernel@...)
    #1 SMP ..."): a rebuilt kernel has another."""
    with open(bzimage, "rb") as f:
        header = f.read(0x400)
        if len(header) < 0x210 or header[0x202:0x206] != b"HdrS":
            raise DaliError(f"{bzimage} is not an x86 bzImage (no HdrS header): give arch/x86/boot/bzImage")
        offset = struct.unpack_from("<H", header, 0x20E)[0]
        f.seek(offset + 0x200)
        return f.read(256).split(b"\0")[0].decode(errors="replace")


def kernel_release(bzimage: Path) -> str:
    """The release string (`uname -r`) built into an x86 bzImage."""
    return kernel_version(bzimage).split(" ")[0]


def modules_dir(path: Path, release: str) -> Path:
    """X/lib/modules/<release> from X (INSTALL_MOD_PATH), X/lib/modules or the directory itself."""
    path = Path(path)
    for candidate in (path / "lib/modules" / release, path / release, path):
        if candidate.name == release and (candidate / "modules.order").is_file():
            return candidate
    raise DaliError(f"{path} has no lib/modules/{release}/modules.order: run "
                    f"`make modules_install INSTALL_MOD_PATH={path}` for the kernel you boot ({release})")


def _module_name(filename: str) -> str:
    for suffix in _COMPRESSED:
        if filename.endswith(suffix):
            filename = filename[: -len(suffix)]
    return filename[: -len(".ko")].replace("-", "_")


def _read_module(path: Path) -> bytes:
    """A .ko's bytes, decompressed if it is .ko.xz/.zst/.gz (CONFIG_MODULE_COMPRESS_*)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], stdout=subprocess.PIPE, check=True).stdout
    return data


def _modinfo(elf: bytes) -> dict[str, list[str]]:
    """The .modinfo section of an ELF64 little-endian module: key -> values."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise DaliError("not an ELF64 module")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i):
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name, offset, size = section(i)
        if elf[stroff + name: elf.index(b"\0", stroff + name)] == b".modinfo":
            for entry in elf[offset: offset + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def _builtin(moddir: Path) -> set[str]:
    path = moddir / "modules.builtin"
    if not path.is_file():
        return set()
    return {_module_name(Path(line.strip()).name) for line in path.read_text().splitlines() if line.strip()}


def root_module_files(moddir: Path, wanted=ROOT_MODULES, required=REQUIRED) -> list[Path]:
    """The .ko files to load, dependencies first, so that `wanted` are all loaded or built in.

    Dependencies come from each module's own .modinfo `depends=` (what depmod uses too), so this
    works on a tree where depmod never ran (dpkg-deb -x, make modules_install without kmod).
    """
    files = {_module_name(p.name): p for p in moddir.rglob("*.ko*") if p.is_file()}
    builtin = _builtin(moddir)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name not in files:
            if name in required or chain:
                raise DaliError(f"{moddir} has no module {name} and the kernel does not build it in "
                                f"({' -> '.join(chain + (name,))}): the root disk needs it; build it "
                                f"(=m or =y) or check the modules directory")
            return  # an optional one (crc32c_intel) this kernel does not have
        seen.add(name)
        info = _modinfo(_read_module(files[name]))
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                visit(dep.replace("-", "_"), chain + (name,))
        order.append(files[name])

    for name in wanted:
        visit(name, ())
    return order


# --- the initramfs --------------------------------------------------------------------------

def init_path(cache_dir: Path) -> Path:
    """Where the /init of this version of initramfs_init.c is (or will be) cached."""
    return Path(cache_dir) / f"dali-init-{hashlib.sha256(INIT_SOURCE.read_bytes()).hexdigest()[:12]}"


def build_init(cache_dir: Path) -> Path:
    """cache_dir/dali-init-<hash>: initramfs_init.c compiled static, once per version of the source."""
    binary = init_path(cache_dir)
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(binary.name + f".{os.getpid()}")
    run(["gcc", "-static", "-Os", "-s", "-o", str(partial), str(INIT_SOURCE)],
        what="compiling the initramfs /init (needs gcc and libc6-dev)")
    os.replace(partial, binary)
    return binary


class _Cpio:
    """A newc ("070701") cpio writer: what the kernel unpacks as an initramfs."""

    def __init__(self, out):
        self.out, self.ino, self.dirs = out, 1, set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self.dirs:
                self.dirs.add(path)
                self._entry(path, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, 0o100000 | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self.dir(name.strip("/").rsplit("/", 1)[0])
        self._entry(name.strip("/"), 0o020600, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def build_initramfs(moddir: Path, out: Path, init_binary: Path) -> list[str]:
    """Write out: /init + the root disk's modules for the kernel of moddir (X/lib/modules/<release>).

    Returns the module names it holds (empty when the kernel builds all of them in). Written
    under a temporary name and renamed.
    """
    moddir, out = Path(moddir), Path(out)
    modules = root_module_files(moddir)
    partial = out.with_name(f".{out.name}.{os.getpid()}")
    with open(partial, "wb") as f:
        cpio = _Cpio(f)
        for d in ("dev", "proc", "sys", "root", "dali"):
            cpio.dir(d)
        cpio.chardev("dev/console", 5, 1)  # the kernel opens it as init's stdin/out/err
        cpio.file("init", Path(init_binary).read_bytes(), 0o755)
        listed = []
        for path in modules:
            inside = f"lib/modules/{moddir.name}/{_module_name(path.name)}.ko"
            cpio.file(inside, _read_module(path))
            listed.append("/" + inside)
        cpio.file("dali/modules", "".join(p + "\n" for p in listed).encode())
        cpio.close()
    partial.chmod(0o644)
    os.replace(partial, out)
    return [_module_name(p.name) for p in modules]


# --- the modules disk -----------------------------------------------------------------------

def build_modules_disk(moddir: Path, out: Path) -> None:
    """out: a raw ext4 image holding <release>/ (all of moddir, plus a fresh depmod), for /lib/modules.

    depmod runs on a staging tree of hard links (copies across filesystems), so it never writes
    into the user's INSTALL_MOD_PATH. No journal: the disk is attached read-only to every node.
    """
    moddir, out = Path(moddir), Path(out)
    release = moddir.name
    work = work_dir(out.parent)  # named after this process: a killed build's is removed later
    try:
        stage = work / "lib/modules" / release
        stage.parent.mkdir(parents=True)
        try:
            shutil.copytree(moddir, stage, symlinks=True, copy_function=os.link)
        except OSError:
            shutil.rmtree(stage, ignore_errors=True)
            shutil.copytree(moddir, stage, symlinks=True)
        for link in ("build", "source"):  # symlinks into the build tree: meaningless in the guest
            if (stage / link).is_symlink():
                (stage / link).unlink()
        for generated in stage.glob("modules.*"):  # depmod rewrites these; unlink our links first
            if generated.name not in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
                generated.unlink()
        run(["depmod", "-b", str(work), release], what=f"depmod for {release}")
        used = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file() and not p.is_symlink())
        size = (used * 5 // 4 + 64 * 2**20 + 2**20 - 1) // 2**20 * 2**20
        raw = work / "modules.img"
        with open(raw, "wb") as f:
            f.truncate(size)
        run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-L", "dali-modules", "-d", str(work / "lib/modules"),
             str(raw)], what="mkfs.ext4 of the modules disk")
        raw.chmod(0o644)
        os.replace(raw, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # python -m dali.initramfs BZIMAGE INSTALL_MOD_PATH OUTDIR
    import sys
    import time

    bzimage, modpath, outdir = map(Path, sys.argv[1:4])
    outdir.mkdir(parents=True, exist_ok=True)
    release = kernel_release(bzimage)
    moddir = modules_dir(modpath, release)
    t = time.monotonic()
    names = build_initramfs(moddir, outdir / "initramfs.cpio", build_init(outdir))
    print(f"{release}: initramfs with {names or 'no modules'} in {time.monotonic() - t:.2f} s")
    t = time.monotonic()
    build_modules_disk(moddir, outdir / "modules.img")
    print(f"modules disk in {time.monotonic() - t:.2f} s")
