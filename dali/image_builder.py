"""The Debian guest image every node boots: a debootstrap tree, cached as a tarball, made into a disk.

Two steps, because they change for different reasons:

1. build_rootfs_tarball(): debootstrap + our customisation (templates/guest/), slow (~1.5 min),
   cached under state/cache/ by a hash of everything that decides its content (rootfs_recipe()).
2. node_image(): tarball -> base.qcow2, vmlinuz, initrd.img, seconds, with no loop mount
   (`mkfs.ext4 -d` fills the filesystem from a directory); cached beside the tarball too, so
   each cluster copies it (dali/image.py) instead of building it again.

The image is made to be cloned. Nothing in it may be unique to one machine: the machine-id and
hostname come from the kernel command line (systemd.machine_id=, systemd.hostname=), and each
node's ssh host key and address, and the cluster's key root accepts, from its identity disk
(dali/identity_disk.py).

Everything here is a plain function of plain values (no doit, no libvirt, no Cluster), so it
can be tested and reused on its own; tasks/image.py wires it into the graph.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from dali.apt_sources import host_apt_mirror
from dali.commands import finished, run, spawn
from dali.cluster import REPO
from dali.errors import DaliError
from dali.initramfs import build_initramfs
from dali.scratch import (forget_process_group, record_process_group, remove_abandoned_work, remove_tree,
                          work_dir)
from dali.text import is_digits

# Bump when the customisation code below changes what ends up in the tree, so cached tarballs
# made by older code are not reused. (Changes to templates/guest/ are noticed by their hash.)
RECIPE_VERSION = 3

TEMPLATES_DIR = REPO / "templates" / "guest"

IMAGE_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",  # kernel + initrd, booted directly by qemu (-kernel/-initrd)
    "systemd-sysv",       # systemd as PID 1: machine-id and hostname from the kernel command line
    "udev",               # loads nfit/nd_pmem for the NVDIMM, starts the guest agent on its port
    "dbus",               # without it there is no logind, and ACPI power-off is ignored
    "ndctl",              # inspect/configure the NVDIMM namespace
    "qemu-guest-agent",   # dali runs guest commands through it; no network needed
    "openssh-server",
    "iproute2",
    "e2fsprogs",          # fsck.ext4 for the root filesystem
    "kmod",               # modprobe, used by udev and initramfs
    "procps",             # ps, free, sysctl: the minimum to look around in a node
    "util-linux",         # lsblk, mount, wipefs
    "iputils-ping",       # ping NODE: the nodes resolve each other by name
    "ocfs2-tools",        # fs.type = "ocfs2": in every image, so switching it rebuilds nothing
    "python3",            # mmap of /dev/dax0.0 (device-dax has no read/write) for verify; famfs.
                          # Not python3-minimal: its interpreter has no mmap module built in.
)

Log = Callable[[str], None]


# --- the root filesystem tarball ------------------------------------------------------------

def rootfs_recipe(suite: str, mirror: str, http_proxy: str, extra_packages: list[str]) -> dict:
    """Everything that determines the debootstrap tree, as a JSON-serialisable dict.

    Why: the caller hands it to doit's config_changed, and build_rootfs_tarball() names the
    cached tarball after its hash, so changing any of these (or templates/guest/, or this
    module's RECIPE_VERSION) makes a new tarball while an unchanged recipe reuses the old one.

    An empty mirror means the host's (host_apt_mirror()), as for the image.mirror setting.
    The package names were checked when the settings were loaded (dali/settings.py).
    http_proxy is carried along because debootstrap needs it, but it does not change the tree,
    so it is left out of the tarball's name (see _recipe_hash).
    """
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": suite,
        "mirror": (mirror or host_apt_mirror()).rstrip("/"),
        "http_proxy": http_proxy,
        "packages": sorted(set(IMAGE_PACKAGES) | set(extra_packages)),
        "templates": _templates_digest(TEMPLATES_DIR),
    }


def _templates_digest(root: Path) -> str:
    """sha256 over the relative path, executable bit and content of every file under root."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(b"x" if os.access(path, os.X_OK) else b"-")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _recipe_hash(recipe: dict) -> str:
    content = {key: value for key, value in recipe.items() if key != "http_proxy"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def rootfs_tarball_path(recipe: dict, cache_dir: Path) -> Path:
    """Where the tarball for this recipe is (or will be) cached."""
    return Path(cache_dir) / f"rootfs-{_recipe_hash(recipe)}.tar"


def build_rootfs_tarball(recipe: dict, cache_dir: Path, log: Log) -> Path:
    """Make (or reuse) cache_dir/rootfs-<hash of recipe>.tar: a customised debootstrap tree.

    Why cached: debootstrap takes minutes and needs the mirror; every cluster of this checkout
    can share one tarball, and a rebuilt node image (new ssh key, new disk size) needs none.

    The tree is built in a temporary directory under cache_dir and the tarball is written under
    a temporary name, then renamed: a run that is interrupted leaves no tarball that looks done.
    A tree that debootstrap finished is kept until its tarball is written (_DEBOOTSTRAPPED), so
    a run stopped while customising or writing it carries on from there.
    debootstrap's output goes to cache_dir/rootfs-<hash>.log, which is kept (it is what a user
    needs when the mirror or proxy is wrong). The cache is shared by the checkout's clusters, so
    a build holds a lock on the cache directory: a second cluster wanting the same tarball waits
    for it rather than debootstrapping it again.
    """
    cache_dir = Path(cache_dir)
    tarball = rootfs_tarball_path(recipe, cache_dir)
    if tarball.exists():
        return tarball
    if os.geteuid() != 0:
        raise DaliError("building the guest root filesystem needs root (debootstrap, chroot): run dali as root")
    if not shutil.which("debootstrap"):
        raise DaliError("debootstrap is not installed: run scripts/setup (or apt-get install debootstrap)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir, log):
        if not tarball.exists():  # another cluster may have built it while we waited
            _build_rootfs_tarball(recipe, cache_dir, tarball, log)
    return tarball


@contextmanager
def _locked(directory: Path, log: Log):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting: another doit is building a guest image in {directory}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# A debootstrap tree that is complete, kept while it is customised and written out: a run
# stopped after debootstrap (Ctrl-C while customising, a killed tar) carries on from it instead
# of debootstrapping again. Everything _customise() does can be done twice.
_DEBOOTSTRAPPED = ".dali-debootstrapped-"


def kept_tree(tarball: Path) -> Path:
    """Where the finished debootstrap tree for this tarball is kept until it is written."""
    return tarball.with_name(_DEBOOTSTRAPPED + tarball.stem)


def _build_rootfs_tarball(recipe: dict, cache_dir: Path, tarball: Path, log: Log) -> None:
    name = tarball.stem
    remove_abandoned_work(cache_dir)
    tree = kept_tree(tarball)
    work = work_dir(cache_dir)
    try:
        for other in cache_dir.glob(f"{_DEBOOTSTRAPPED}*"):
            if other != tree:  # left by a stopped build of a recipe no longer wanted
                # Into the work directory first, in one rename: a removal stopped halfway must
                # never leave a partial tree under a name that says "finished".
                os.rename(other, work / other.name)
        if tree.is_dir():
            log(f"carrying on from the debootstrap tree a stopped run finished ({tree.name})")
        else:
            _debootstrap(recipe, work / "tree", cache_dir / f"{name}.log", cache_dir / "debs", log)
            os.rename(work / "tree", tree)  # complete: from here on it is worth keeping
        log("customising the guest tree")
        _customise(tree)
        log(f"writing {tarball}")
        partial = work / "rootfs.tar"
        # Numeric owners: the tree's uids are the guest's, not this host's. xattrs carry file
        # capabilities (security.capability) that some packages set instead of setuid.
        run(["tar", "--create", "--file", str(partial), "--numeric-owner",
              "--xattrs", "--xattrs-include=*", "--sparse", "-C", str(tree), "."],
             what="tar of the guest tree")
        partial.chmod(0o644)
        # The tree goes back into the work directory (deleted below, or by the next run if this
        # one dies) just before the tarball takes its place: never both, never a stray tree.
        os.rename(tree, work / "done")
        os.replace(partial, tarball)
    finally:
        remove_tree(work)
    log(f"guest root filesystem ready: {tarball} ({tarball.stat().st_size // 2**20} MiB)")


def _debootstrap(recipe: dict, tree: Path, log_file: Path, debs: Path, log: Log) -> None:
    """Run debootstrap into tree, its whole output into log_file, its main steps to log()."""
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(var, None)  # only the configured proxy (image.http_proxy) is used, never an inherited one
    if recipe["http_proxy"]:
        env["http_proxy"] = env["https_proxy"] = recipe["http_proxy"]
    # Downloaded packages are kept beside the tarballs (state/cache/debs/), for every recipe: a
    # recipe that changes (a file of templates/guest/, one more package) or a debootstrap killed
    # halfway downloads only what it lacks. debootstrap checks each kept package against the
    # mirror's signed index before it uses it, and fetches it again if it does not match.
    debs.mkdir(exist_ok=True)
    # Two things debootstrap would spend half its time on, neither of which the image keeps:
    # - dpkg's fsync of every file it unpacks: a tree that is thrown away if the run dies needs
    #   none of them. dpkg reads dpkg.cfg.d/ in the chroot, and debootstrap installs into a
    #   directory that already holds files; _customise() removes the file again.
    # - two initramfs builds (the kernel's postinst, then initramfs-tools' trigger) of an initrd
    #   no node boots: INITRD=No skips the kernel hook, and the trigger then finds no initrd to
    #   update. Nodes boot dali's own initramfs (build_node_image).
    # 119 s -> 61 s on the 2-core test machine (docs/speed.md, "The image builder").
    unsafe_io = tree / _DPKG_UNSAFE_IO
    unsafe_io.parent.mkdir(parents=True)
    unsafe_io.write_text("force-unsafe-io\n")
    env["INITRD"] = "No"
    command = ["debootstrap", "--variant=minbase", "--include=" + ",".join(recipe["packages"]),
               f"--cache-dir={debs}", recipe["suite"], str(tree), recipe["mirror"]]
    log(f"debootstrap {recipe['suite']} from {recipe['mirror']} (about a minute; log: {log_file})")
    with open(log_file, "w") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        process = spawn(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, errors="replace")
        # debootstrap's children (dpkg in the chroot) outlive it if it is killed: the next run
        # kills what is left of its process group before deleting the tree (remove_abandoned_work).
        record_process_group(tree.parent, process.pid)
        for line in process.stdout:
            out.write(line)
            if _is_debootstrap_milestone(line):
                log(line.rstrip())
        status = process.wait()
        finished(process)
        # Its group is gone: a later run must not kill whatever group gets that number next.
        forget_process_group(tree.parent)
        # debootstrap keeps the details of a failed dpkg run inside the tree; the tree is deleted, so copy them.
        inner_log = tree / "debootstrap" / "debootstrap.log"
        if status != 0 and inner_log.exists():
            out.write("\n--- debootstrap/debootstrap.log from the tree ---\n")
            out.write(inner_log.read_text(errors="replace"))
    if status != 0:
        proxy = (f"the proxy image.http_proxy = {recipe['http_proxy']!r}" if recipe["http_proxy"]
                 else "set image.http_proxy if you need a proxy")
        raise DaliError(f"debootstrap of {recipe['suite']} from {recipe['mirror']} failed (log: {log_file}): "
                        f"check image.mirror, image.suite, image.extra_packages and {proxy}")


# Present only while debootstrap runs (see _debootstrap).
_DPKG_UNSAFE_IO = "etc/dpkg/dpkg.cfg.d/dali-unsafe-io"


def _is_debootstrap_milestone(line: str) -> bool:
    """Problems and phases ("I: Unpacking the base system..."), not the hundreds of per-package lines."""
    if line.startswith(("E:", "W:")):
        return True
    words = line.split()
    return words[:1] == ["I:"] and len(words) >= 4 and line.rstrip().endswith(("...", "successfully."))


# Units a node does not need at boot, each of them TCG time on every boot of every node.
_BOOT_UNITS_DISABLED = (
    "getty@tty1.service",                 # no display: the console is the serial one (ttyS0)
    "systemd-network-generator.service",  # turns ip= on the kernel command line into units: unused
    "systemd-pstore.service",             # saves EFI/ACPI crash records: qemu's pc machine keeps none
    "e2scrub_all.timer", "fstrim.timer", "dpkg-db-backup.timer",  # housekeeping for long-lived disks
)
# Static units (pulled in by others, so disabling is not enough).
_BOOT_UNITS_MASKED = (
    "modprobe@drm.service",               # logind wants it; a node has no display
    "modprobe@dm_mod.service",            # device-mapper: a node's disks are plain
    "systemd-random-seed.service",        # the kernel seeds itself (6.1); 1-2 s of a TCG boot
    "dev-hugepages.mount",                # hugetlbfs: nothing on a node uses it
)
_GENERATORS_MASKED = (
    "systemd-gpt-auto-generator", "systemd-hibernate-resume-generator",
    "systemd-cryptsetup-generator", "systemd-integritysetup-generator",
    "systemd-veritysetup-generator", "systemd-system-update-generator",
)


def _customise(tree: Path) -> None:
    """Make the debootstrap tree into an image that any number of nodes can boot as clones."""
    # Static files (fstab, hostname, network, the ssh host key unit) are kept as files, not code.
    for source in sorted(TEMPLATES_DIR.rglob("*")):
        target = tree / source.relative_to(TEMPLATES_DIR)
        if source.is_dir():
            target.mkdir(mode=0o755, exist_ok=True)
        else:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # it may be a symlink into the tree (resolv.conf-style)
            shutil.copyfile(source, target)
            target.chmod(0o755 if os.access(source, os.X_OK) else 0o644)
            os.chown(target, 0, 0)

    # qemu-guest-agent.service is our own unit (templates/guest/): it starts with the system.
    # dali-identity sets the node's host key, address and resolver from its identity disk
    # (dali/identity_disk.py), so neither systemd-networkd nor a resolver daemon runs; sshd
    # starts per connection from ssh.socket (ours too), not as a daemon started at every boot.
    _chroot(tree, "systemctl", "enable", "dali-identity.service", "qemu-guest-agent.service",
            "ssh.socket")
    _chroot(tree, "systemctl", "disable", "ssh.service", "systemd-networkd.service",
            "systemd-networkd.socket")
    # Nodes have no route off the host: nothing should wait two minutes for "online" at boot,
    # and apt's daily timers would only burn emulated CPU failing to reach a mirror.
    # ndctl-monitor exits with an error on an emulated NVDIMM ("no dimms to monitor": it has no
    # SMART data), which leaves every node "degraded". e2scrub_reap cleans LVM snapshots we never
    # make, at 6 s of TCG time per boot.
    _chroot(tree, "systemctl", "disable", "systemd-networkd-wait-online.service",
            "apt-daily.timer", "apt-daily-upgrade.timer", "ndctl-monitor.service", "e2scrub_reap.service",
            *_BOOT_UNITS_DISABLED)
    _chroot(tree, "systemctl", "mask", *_BOOT_UNITS_MASKED)
    # Generators run at every boot, before any unit starts; these look for things a node never
    # has (GPT partitions, hibernation images, dm-crypt/integrity/verity tables, offline updates).
    generators = tree / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for name in _GENERATORS_MASKED:
        (generators / name).unlink(missing_ok=True)
        (generators / name).symlink_to("/dev/null")

    # No initrd from initramfs-tools: nodes boot dali's own initramfs (build_node_image), and
    # debootstrap made none (INITRD=No). A node that installs packages later gets dpkg's safe
    # default back.
    (tree / _DPKG_UNSAFE_IO).unlink(missing_ok=True)

    # OCFS2's SysV scripts cost seconds of every boot under TCG: masked, and unmasked by dali
    # on the nodes of an fs.type = "ocfs2" cluster (o2cb only: systemd mounts from fstab, and
    # the ocfs2 script would race it).
    for unit in ("o2cb.service", "ocfs2.service"):
        masked = tree / "etc/systemd/system" / unit
        masked.unlink(missing_ok=True)
        masked.symlink_to("/dev/null")

    # The machine-id comes from systemd.machine_id= on the kernel command line: systemd 252 then
    # ignores what the file holds and writes the command line's id into it, also on a clone of a
    # disk that was booted (and so committed an id) before. The file must be empty, not missing:
    # a missing one means "first boot", and then systemd re-applies unit presets, which enables
    # again every unit we disable here.
    (tree / "etc/machine-id").write_text("")
    (tree / "etc/machine-id").chmod(0o444)
    dbus_id = tree / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")  # D-Bus must follow the node's id, not keep the build's

    # Host keys made by openssh-server's postinst would be shared by every node: each node gets
    # its own from its identity disk (dali-identity.service).
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()

    # Only the cluster's ssh key logs in (each node's identity disk brings it).
    _chroot(tree, "usermod", "--lock", "root")

    # Keep the tree small and free of the build host's traces.
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "var/log/apt/*", "var/log/*.log"):
        for path in tree.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    resolv = tree / "etc/resolv.conf"
    if resolv.is_file() and not resolv.is_symlink():
        resolv.write_text("")  # debootstrap copied the build host's; dali-identity writes the node's


def _chroot(tree: Path, *command: str) -> None:
    run(["chroot", str(tree), *command], what=f"{' '.join(command)} in the guest tree")


# --- the node image -------------------------------------------------------------------------

# What a node image is: the files node_image() makes, and each cluster's image/ holds.
NODE_IMAGE_FILES = ("base.qcow2", "vmlinuz", "initrd.img")


def node_image_path(tarball: Path, disk_size_bytes: int, init_binary: Path) -> Path:
    """Where the node image of this tarball, disk size and initramfs /init is cached: beside
    the tarball, named by a hash of the three (the tarball's and the /init's names are hashes
    of what they hold)."""
    tarball = Path(tarball)
    made_of = json.dumps([tarball.name, disk_size_bytes, Path(init_binary).name])
    return tarball.with_name(f"image-{hashlib.sha256(made_of.encode()).hexdigest()[:16]}")


def node_image(tarball: Path, disk_size_bytes: int, init_binary: Path, log: Log) -> Path:
    """The directory holding NODE_IMAGE_FILES for this tarball, disk size and /init, built if
    it is not cached yet.

    Why cached: building takes 7-10 s (unpacking the tarball, mkfs.ext4 -d), and every cluster
    of the checkout boots the same bytes; copying them takes half a second. Nothing in it is
    a cluster's or a node's (keys and addresses come from each node's identity disk), and no
    cluster depends on the cache: each copies the files into its own image/ (dali/image.py),
    so state/cache/ can be deleted at any time.

    Built in a work directory under the cache's lock and renamed into place whole: a present
    directory is a complete image; a killed build leaves only work that the next one removes.
    """
    tarball = Path(tarball)
    out = node_image_path(tarball, disk_size_bytes, init_binary)
    if out.is_dir():
        return out
    cache_dir = tarball.parent
    with _locked(cache_dir, log):
        if out.is_dir():  # another cluster built it while we waited
            return out
        remove_abandoned_work(cache_dir)
        work = work_dir(cache_dir)
        try:
            build_node_image(tarball, work / "image", disk_size_bytes, init_binary, log)
            os.rename(work / "image", out)
        finally:
            remove_tree(work)
    log(f"node image ready: {out}")
    return out


def build_node_image(tarball: Path, out_dir: Path, disk_size_bytes: int, init_binary: Path,
                     log: Log) -> None:
    """Turn the rootfs tarball into out_dir/base.qcow2 + vmlinuz + initrd.img for direct kernel
    boot; out_dir is made here and is the caller's to rename into place.

    initrd.img is dali's own initramfs (dali/initramfs.py: a static /init and the modules that
    mount the root disk, uncompressed), as for your own kernel. initramfs-tools' (even cut down
    to the root disk's modules and no udev) runs its shell scripts first: 1.4 s more of every TCG
    boot until the real init starts (docs/speed.md).

    No loop mount (needs privileges and devices a container may not have): `mkfs.ext4 -d TREE`
    writes the files straight into a sparse raw file, then qemu-img makes it a qcow2 so that
    nodes can be thin overlays of it. The files end mode 0644: qemu runs as libvirt-qemu and
    only reads them.
    """
    tarball, out_dir = Path(tarball), Path(out_dir)
    if not tarball.is_file():
        raise DaliError(f"root filesystem tarball {tarball} is missing: rebuild it (doit forget the image task)")
    out_dir.mkdir(parents=True)
    tree = out_dir / "tree"
    tree.mkdir()
    log(f"unpacking {tarball.name}")
    run(["tar", "--extract", "--file", str(tarball), "--numeric-owner", "--same-owner",
          "--same-permissions", "--xattrs", "--xattrs-include=*", "-C", str(tree)],
         what=f"unpacking {tarball}")

    kernel, modules = _boot_files(tree)
    (out_dir / "vmlinuz").write_bytes(_bootable_kernel(kernel.read_bytes()))
    build_initramfs(modules, out_dir / "initrd.img", init_binary)
    for name in ("vmlinuz", "initrd.img"):
        (out_dir / name).chmod(0o644)

    raw = out_dir / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(disk_size_bytes)  # sparse: only what mkfs writes takes space
    log(f"mkfs.ext4 -d into a {disk_size_bytes // 2**20} MiB disk")
    try:
        run(["mkfs.ext4", "-q", "-F", "-L", "dali-root", "-d", str(tree), str(raw)], what="mkfs.ext4")
    except DaliError:
        used = run(["du", "-s", "--block-size=1M", str(tree)], what="du").split()[0]
        raise DaliError(f"mkfs.ext4 could not fit the {used} MiB guest tree into a "
                        f"{disk_size_bytes // 2**20} MiB disk: raise image.disk_size") from None
    remove_tree(tree)  # free the space before the qcow2 copy
    qcow2 = out_dir / "base.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], what="qemu-img convert")
    qcow2.chmod(0o644)
    raw.unlink()


def _boot_files(tree: Path) -> tuple[Path, Path]:
    """The newest kernel in the tree's /boot and its modules directory."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name[len("vmlinuz-"):]))
    if not kernels:
        raise DaliError("the guest tree has no /boot/vmlinuz-*: keep linux-image-amd64 in the image "
                        "(delete state/cache/rootfs-*.tar to rebuild it)")
    kernel = kernels[-1]
    modules = tree / "lib/modules" / kernel.name[len("vmlinuz-"):]
    if not modules.is_dir():
        raise DaliError(f"the guest tree has {kernel.name} but no /{modules.relative_to(tree)}: "
                        "delete state/cache/rootfs-*.tar to rebuild it")
    return kernel, modules


# Under TCG the guest decompresses its kernel with emulated instructions, before anything else
# can run: the host does it once per image instead. qemu boots the uncompressed kernel (an ELF
# vmlinux) through its PVH entry point. Anything not in the expected shape is booted as it came.
_ELF_MAGIC = b"\x7fELF"
_XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point; without it qemu cannot boot the ELF


def _bootable_kernel(bzimage: bytes) -> bytes:
    """The vmlinux inside a bzImage, if it is xz-compressed (Debian's) and has a PVH entry point."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return bzimage
    setup_sects = bzimage[0x1f1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start:start + payload_length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            vmlinux = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            vmlinux = gzip.decompress(payload)
        else:
            return bzimage  # zstd, lz4, ...: not in Python's standard library
    except (lzma.LZMAError, OSError, EOFError):
        return bzimage
    return vmlinux if _has_pvh_entry(vmlinux) else bzimage


def _has_pvh_entry(elf: bytes) -> bool:
    """Does this 64-bit little-endian ELF carry the Xen PHYS32_ENTRY note (CONFIG_PVH)?"""
    if not elf.startswith(_ELF_MAGIC) or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _version_key(version: str) -> list:
    return [int(part) if is_digits(part) else part for part in re.split(r"([0-9]+)", version)]
