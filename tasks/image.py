"""The Debian guest image every node boots: a debootstrap tree, cached as a tarball, made into a disk.

Two steps, because they change for different reasons:

1. build_rootfs_tarball(): debootstrap + our customisation (templates/guest/), slow (~2 min),
   cached under state/cache/ by a hash of everything that decides its content (rootfs_recipe()).
2. build_node_image(): tarball + the cluster's ssh key -> base.qcow2, vmlinuz, initrd.img,
   quick (seconds), with no loop mount: `mkfs.ext4 -d` fills the filesystem from a directory.

The image is made to be cloned. Nothing in it may be unique to one machine: the machine-id and
hostname come from the kernel command line (systemd.machine_id=, systemd.hostname=), ssh host keys
are made at first boot of each machine-id, and DHCP identifies a node by its MAC.

Everything here is a plain function (no doit, no libvirt, no config object), so it can be
tested and reused on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from doit.tools import config_changed

from tasks import errors, owned
from tasks.errors import DaliError
from tasks.reporter import log

# Bump when the customisation code below changes what ends up in the tree, so cached tarballs
# made by older code are not reused. (Changes to templates/guest/ are noticed by their hash.)
RECIPE_VERSION = 1

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates" / "guest"

IMAGE_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",  # kernel + initrd, booted directly by qemu (-kernel/-initrd)
    "systemd-sysv",       # systemd as PID 1: machine-id and hostname from the kernel command line
    "udev",               # loads nfit/nd_pmem for the NVDIMM, starts the guest agent on its port
    "dbus",               # without it there is no logind, and ACPI power-off is ignored
    "systemd-resolved",   # DNS from DHCP (libvirt's dnsmasq knows every node's name)
    "ndctl",              # inspect/configure the NVDIMM namespace
    "qemu-guest-agent",   # dali runs guest commands through it; no network needed
    "openssh-server",
    "iproute2",
    "e2fsprogs",          # fsck.ext4 for the root filesystem
    "kmod",               # modprobe, used by udev and initramfs
    "procps",             # ps, free, sysctl: the minimum to look around in a node
    "util-linux",         # lsblk, mount
)

# What a Debian package name may look like (Debian policy 5.6.1); anything else is a typo or
# an attempt to slip an option into debootstrap's --include.
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")

DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Suites and components of Debian's own archive. A repository that uses other names
# (nodesource's "nodistro", google's "cloud-sdk-bookworm", docker's "stable") is not a Debian mirror.
_DEBIAN_CODENAMES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                     "stable", "testing", "unstable", "oldstable", "oldoldstable", "experimental"}
_DEBIAN_SUITE_SUFFIXES = ("", "-updates", "-backports", "-backports-sloppy", "-proposed-updates")
_DEBIAN_COMPONENTS = {"main", "contrib", "non-free", "non-free-firmware"}

Log = Callable[[str], None]


# --- which mirror ---------------------------------------------------------------------------

def host_apt_mirror(sources_dirs: Iterable[str] = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")) -> str:
    """The Debian mirror URL the host's apt uses; fall back to http://deb.debian.org/debian.

    Why: the host's mirror is the one known to be reachable from here (a local mirror, a proxy,
    a network that only allows that host), so the guest image is best fetched from it too.

    Reads one-line `sources.list` files and deb822 `*.sources` files, like apt does: in a
    directory only `*.list` and `*.sources` count, so `foo.sources.disabled-by-x` is ignored.
    Security repositories and third-party repositories (nodesource, google, docker, ...) are skipped.
    """
    for entry in sources_dirs:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
        elif path.is_file():
            files = [path]
        else:
            continue
        for file in files:
            try:
                text = file.read_text(errors="replace")
            except OSError:
                continue  # unreadable: apt would complain, we just look elsewhere
            repos = _parse_deb822(text) if file.suffix == ".sources" else _parse_one_line(text)
            for uri, suite, components in repos:
                if _is_debian_mirror(uri, suite, components):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def _parse_one_line(text: str) -> list[tuple[str, str, list[str]]]:
    """(uri, suite, components) of each `deb [options] uri suite comp...` line."""
    repos = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue  # deb-src and anything else gives no binary packages
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=amd64 signed-by=...]
        words = line.split()
        if len(words) >= 4:
            repos.append((words[1], words[2], words[3:]))
    return repos


def _parse_deb822(text: str) -> list[tuple[str, str, list[str]]]:
    """(uri, suite, components) for each URI x suite of each enabled `Types: deb` stanza."""
    repos = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:  # continuation of a multi-line field
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        components = fields.get("components", "").split()
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                repos.append((uri, suite, components))
    return repos


def _is_debian_mirror(uri: str, suite: str, components: list[str]) -> bool:
    """A repository of Debian's main archive (not security, not a third party), usable by debootstrap."""
    if not re.match(r"^(https?|file)://", uri):
        return False  # cdrom:, mirror+file:, tor+http: ... debootstrap cannot use them
    if "security" in uri or "security" in suite or "/updates" in suite:
        return False  # the security archive has no base system to bootstrap from
    if not any(suite in (name + suffix for suffix in _DEBIAN_SUITE_SUFFIXES) for name in _DEBIAN_CODENAMES):
        return False
    if not components or not set(components) <= _DEBIAN_COMPONENTS:
        return False
    # A Debian mirror is on *.debian.org or serves the archive from a ".../debian" directory.
    host_and_path = uri.split("://", 1)[1]
    host = host_and_path.split("/", 1)[0]
    return host.endswith("debian.org") or "debian" in host_and_path.strip("/").split("/")[1:]


# --- the root filesystem tarball ------------------------------------------------------------

def rootfs_recipe(suite: str, mirror: str, http_proxy: str, extra_packages: list[str]) -> dict:
    """Everything that determines the debootstrap tree, as a JSON-serialisable dict.

    Why: the caller hands it to doit's config_changed, and build_rootfs_tarball() names the
    cached tarball after its hash, so changing any of these (or templates/guest/, or this
    module's RECIPE_VERSION) makes a new tarball while an unchanged recipe reuses the old one.

    An empty mirror means the host's (host_apt_mirror()), as for the image.mirror setting.
    http_proxy is carried along because debootstrap needs it, but it does not change the tree,
    so it is left out of the tarball's name (see _recipe_hash).
    """
    for name in extra_packages:
        if not isinstance(name, str) or not _PACKAGE_NAME.match(name):
            raise DaliError(f"image.extra_packages: {name!r} is not a Debian package name; fix or remove it")
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
    debootstrap's output goes to cache_dir/rootfs-<hash>.log, which is kept (it is what a user
    needs when the mirror or proxy is wrong).
    """
    cache_dir = Path(cache_dir)
    tarball = rootfs_tarball_path(recipe, cache_dir)
    name = tarball.stem
    if tarball.exists():
        return tarball
    if os.geteuid() != 0:
        raise DaliError("building the guest root filesystem needs root (debootstrap, chroot): run dali as root")
    if not shutil.which("debootstrap"):
        raise DaliError("debootstrap is not installed: run scripts/setup (or apt-get install debootstrap)")

    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(cache_dir)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", dir=cache_dir))
    try:
        tree = work / "tree"
        _debootstrap(recipe, tree, cache_dir / f"{name}.log", log)
        log("customising the guest tree")
        _customise(tree)
        log(f"writing {tarball}")
        partial = work / "rootfs.tar"
        # Numeric owners: the tree's uids are the guest's, not this host's. xattrs carry file
        # capabilities (security.capability) that some packages set instead of setuid.
        _run(["tar", "--create", "--file", str(partial), "--numeric-owner",
              "--xattrs", "--xattrs-include=*", "--sparse", "-C", str(tree), "."],
             what="tar of the guest tree")
        partial.chmod(0o644)
        os.replace(partial, tarball)
    finally:
        _remove_tree(work)
    log(f"guest root filesystem ready: {tarball} ({tarball.stat().st_size // 2**20} MiB)")
    return tarball


def _debootstrap(recipe: dict, tree: Path, log_file: Path, log: Log) -> None:
    """Run debootstrap into tree, its whole output into log_file, its main steps to log()."""
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(var, None)  # only the configured proxy (image.http_proxy) is used, never an inherited one
    if recipe["http_proxy"]:
        env["http_proxy"] = env["https_proxy"] = recipe["http_proxy"]
    command = ["debootstrap", "--variant=minbase", "--include=" + ",".join(recipe["packages"]),
               recipe["suite"], str(tree), recipe["mirror"]]
    log(f"debootstrap {recipe['suite']} from {recipe['mirror']} (about 2 minutes; log: {log_file})")
    with open(log_file, "w") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace")
        for line in process.stdout:
            out.write(line)
            if _is_debootstrap_milestone(line):
                log(line.rstrip())
        status = process.wait()
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


def _is_debootstrap_milestone(line: str) -> bool:
    """Problems and phases ("I: Unpacking the base system..."), not the hundreds of per-package lines."""
    if line.startswith(("E:", "W:")):
        return True
    words = line.split()
    return words[:1] == ["I:"] and len(words) >= 4 and line.rstrip().endswith(("...", "successfully."))


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

    _chroot(tree, "systemctl", "enable", "systemd-networkd.service", "systemd-resolved.service",
            "dali-ssh-host-keys.service")
    # Nodes have no route off the host: nothing should wait two minutes for "online" at boot,
    # and apt's daily timers would only burn emulated CPU failing to reach a mirror.
    # ndctl-monitor exits with an error on an emulated NVDIMM ("no dimms to monitor": it has no
    # SMART data), which leaves every node "degraded". e2scrub_reap cleans LVM snapshots we never
    # make, at 6 s of TCG time per boot.
    _chroot(tree, "systemctl", "disable", "systemd-networkd-wait-online.service",
            "apt-daily.timer", "apt-daily-upgrade.timer", "ndctl-monitor.service", "e2scrub_reap.service")

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

    # Host keys made by openssh-server's postinst would be shared by every node: each node makes
    # its own at boot (dali-ssh-host-keys.service).
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()

    # Only the cluster's ssh key logs in (added per cluster by build_node_image).
    _chroot(tree, "usermod", "--lock", "root")

    # Keep the tree small and free of the build host's traces.
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "var/cache/debconf/*-old", "var/lib/dpkg/*-old", "var/log/apt/*", "var/log/*.log"):
        for path in tree.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    resolv = tree / "etc/resolv.conf"
    if resolv.is_file() and not resolv.is_symlink():
        resolv.write_text("")  # debootstrap copied the build host's; systemd-resolved normally replaces it


def _chroot(tree: Path, *command: str) -> None:
    _run(["chroot", str(tree), *command], what=f"{' '.join(command)} in the guest tree")


# --- the node image -------------------------------------------------------------------------

def build_node_image(tarball: Path, ssh_public_key: str, out_dir: Path, disk_size_bytes: int, log: Log) -> dict:
    """Turn the rootfs tarball into out_dir/base.qcow2 + vmlinuz + initrd.img for direct kernel boot.

    Why separate from the tarball: the ssh key and disk size are per cluster, and this takes
    seconds. No loop mount (needs privileges and devices a container may not have):
    `mkfs.ext4 -d TREE` writes the files straight into a sparse raw file, then qemu-img makes it
    a qcow2 so that nodes can be thin overlays of it.

    Files are built under temporary names in out_dir and renamed at the end, disk last, so a
    present base.qcow2 means a complete set. They end mode 0644: qemu runs as libvirt-qemu and
    only reads them.
    """
    tarball, out_dir = Path(tarball), Path(out_dir)
    key = ssh_public_key.strip()
    if not key or "\n" in key or not re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", key):
        raise DaliError(f"ssh public key {key[:40]!r}... is not one OpenSSH public key line: "
                        "give the contents of a .pub file")
    if not tarball.is_file():
        raise DaliError(f"root filesystem tarball {tarball} is missing: rebuild it (doit forget the image task)")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".base.", dir=out_dir))
    try:
        tree = work / "tree"
        tree.mkdir()
        log(f"unpacking {tarball.name}")
        _run(["tar", "--extract", "--file", str(tarball), "--numeric-owner", "--same-owner",
              "--same-permissions", "--xattrs", "--xattrs-include=*", "-C", str(tree)],
             what=f"unpacking {tarball}")

        ssh_dir = tree / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(key + "\n")
        (ssh_dir / "authorized_keys").chmod(0o600)

        kernel, initrd = _boot_files(tree)
        for source, name in ((kernel, "vmlinuz"), (initrd, "initrd.img")):
            shutil.copyfile(source, work / name)
            (work / name).chmod(0o644)

        raw = work / "disk.raw"
        with open(raw, "wb") as f:
            f.truncate(disk_size_bytes)  # sparse: only what mkfs writes takes space
        log(f"mkfs.ext4 -d into a {disk_size_bytes // 2**20} MiB disk")
        try:
            _run(["mkfs.ext4", "-q", "-F", "-L", "dali-root", "-d", str(tree), str(raw)], what="mkfs.ext4")
        except DaliError:
            used = _run(["du", "-s", "--block-size=1M", str(tree)], what="du").split()[0]
            raise DaliError(f"mkfs.ext4 could not fit the {used} MiB guest tree into a "
                            f"{disk_size_bytes // 2**20} MiB disk: raise image.disk_size") from None
        shutil.rmtree(tree)  # free the space before the qcow2 copy
        qcow2 = work / "base.qcow2"
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], what="qemu-img convert")
        qcow2.chmod(0o644)

        result = {"disk": out_dir / "base.qcow2", "kernel": out_dir / "vmlinuz", "initrd": out_dir / "initrd.img"}
        os.replace(work / "vmlinuz", result["kernel"])
        os.replace(work / "initrd.img", result["initrd"])
        os.replace(qcow2, result["disk"])
    finally:
        _remove_tree(work)
    log(f"node image ready: {result['disk']}")
    return {role: str(path) for role, path in result.items()}


def _boot_files(tree: Path) -> tuple[Path, Path]:
    """The newest kernel in the tree's /boot and its initrd."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name[len("vmlinuz-"):]))
    if not kernels:
        raise DaliError("the guest tree has no /boot/vmlinuz-*: keep linux-image-amd64 in the image "
                        "(delete state/cache/rootfs-*.tar to rebuild it)")
    kernel = kernels[-1]
    initrd = tree / "boot" / ("initrd.img-" + kernel.name[len("vmlinuz-"):])
    if not initrd.is_file():
        raise DaliError(f"the guest tree has {kernel.name} but no {initrd.name}: "
                        "delete state/cache/rootfs-*.tar to rebuild it")
    return kernel, initrd


def _version_key(version: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]


# --- helpers --------------------------------------------------------------------------------

def _run(command: list[str], what: str) -> str:
    """Run command; a failure becomes a DaliError with its last line of output."""
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    except FileNotFoundError:
        raise DaliError(f"{command[0]} is not installed: run scripts/setup") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise DaliError(f"{what} failed ({command[0]} exit {done.returncode}: {last})")
    return done.stdout


def _remove_tree(path: Path) -> None:
    """rm -rf path, after unmounting anything debootstrap left mounted inside it.

    Why: a debootstrap that is killed can leave /proc, /sys or a bind mount of the host's /dev
    mounted in the tree; deleting through those would hit the host.
    """
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4].startswith(prefix) for line in f):
            raise DaliError(f"{path} still has filesystems mounted inside: unmount them, then delete it")
    shutil.rmtree(path)


def _remove_abandoned_work(cache_dir: Path) -> None:
    """Delete work directories of earlier builds whose process is gone (killed, power cut)."""
    for work in cache_dir.glob(".rootfs-*.*.*"):
        pid = work.name.split(".")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove_tree(work)


# --- the doit stage ----------------------------------------------------------------------------

def task(cluster) -> Iterator[dict]:
    """image:sshkey, image:rootfs (cached per recipe), image:base (this cluster's image)."""
    settings = cluster.image
    recipe = rootfs_recipe(settings.suite, settings.mirror or host_apt_mirror(),
                           settings.http_proxy, list(settings.extra_packages))
    tarball = rootfs_tarball_path(recipe, cluster.cache_dir)
    key, pub = cluster.ssh_key, cluster.ssh_key.with_suffix(".pub")
    out = cluster.image_dir
    products = [out / "base.qcow2", out / "vmlinuz", out / "initrd.img"]

    def make_key():
        # Per cluster, no passphrase: it only reaches guests on this host's libvirt network.
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"dali-{cluster.tag}",
              "-f", str(key)], what="ssh-keygen")

    def build_base():
        original_disk = cluster.disk(cluster.original_node)
        if original_disk.exists():
            # The nodes' disks are overlays on base.qcow2: replacing it would corrupt them.
            raise DaliError(f"the image recipe (image.* settings) changed but {original_disk} "
                            "is built on the old image: revert the change, or run doit clean "
                            "(discarding the nodes' disks) and then doit")
        build_node_image(tarball, pub.read_text(), out, settings.disk_size, log)
        for path in products:
            owned.mark(path, cluster.tag)

    def remove_base():
        for path in products:
            owned.remove_if_ours(path, cluster.tag, log)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()

    yield {"name": "sshkey", "actions": [errors.action(make_key)],
           "targets": [key, pub], "uptodate": [True], "task_dep": ["preflight"], "verbosity": 2}
    yield {"name": "rootfs",
           "actions": [errors.action(lambda: build_rootfs_tarball(recipe, cluster.cache_dir, log))],
           "targets": [tarball], "uptodate": [config_changed(json.dumps(recipe, sort_keys=True))],
           "task_dep": ["preflight"], "verbosity": 2}
    yield {"name": "base", "actions": [errors.action(build_base)],
           "file_dep": [tarball, pub], "targets": products, "task_dep": ["preflight"],
           "clean": [errors.action(remove_base)], "verbosity": 2}
