"""A second libvirtd on this machine that plays "a remote libvirt host" for tests.

    with RemoteHost(tmp_root) as host:
        conn = libvirt.open(host.uri)          # qemu+unix:///system?socket=<root>/run/libvirt-sock
        host.run("ls", "/var/lib/dali")        # a command that sees the remote host's files
        host.data_root                         # the same directory, as seen from here

The daemon gets its own network namespace (its bridges, dnsmasq and taps never meet the main
daemon's) and its own mount namespace, in which libvirt's directories, /var/lib/dali and
/var/tmp are directories under root: it starts with none of the main daemon's domains,
networks or pools, and what it makes stays under root. Both daemons share the kernel, /dev and
the users (qemu runs as libvirt-qemu in both).

Its daemons are called libvirtd and virtlogd too: tell them from the main ones by pid file or
namespace, never by name (`pgrep -x libvirtd` finds both).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import libvirt

# What the daemon sees at the right, and which directory under root it really is.
BINDS = {"lib": "/var/lib/libvirt", "run": "/run/libvirt", "etc": "/etc/libvirt",
         "log": "/var/log/libvirt", "cache": "/var/cache/libvirt", "data": "/var/lib/dali"}
DATA_MOUNT = Path(BINDS["data"])
# Says that a RemoteHost made DATA_MOUNT (it was not there): the last instance to stop removes it.
DATA_MOUNT_MADE = Path("/run/dali-remote-host.made-var-lib-dali")
# The main daemon's definitions, which the copy of /etc/libvirt must not carry over.
DEFINITIONS = ["qemu/*.xml", "qemu/autostart/*", "qemu/networks/*.xml", "qemu/networks/autostart/*",
               "storage/*.xml", "storage/autostart/*"]

# Run by `unshare --mount`, so every mount below is this instance's only. $1 is root, $2 the
# network namespace. The first line tells stop() which mount namespace is ours.
#
# /var/tmp is bound last: root may itself live under /var/tmp, and once /var/tmp is covered
# "$1/..." no longer resolves. The earlier binds are unaffected (a bind mount holds the
# directory it was made from, not its path). For the same reason the pid files are named as
# the daemons see them, /run/libvirt/*.pid (= root/run/*.pid here): the daemons write them
# after every bind is in place. They must not be the default /run/*.pid, which the main
# daemons hold (/run itself is shared).
# `ip netns exec` makes one more mount namespace for libvirtd (to remount /sys for the network
# namespace; this drops /sys/fs/cgroup, as for the main daemon): it inherits all binds.
_SCRIPT = r"""
set -eu
readlink /proc/self/ns/mnt
mount --make-rprivate /
mount --bind "$1/lib" /var/lib/libvirt
mount --bind "$1/run" /run/libvirt
mount --bind "$1/etc" /etc/libvirt
mount --bind "$1/log" /var/log/libvirt
mount --bind "$1/cache" /var/cache/libvirt
mount --bind "$1/data" /var/lib/dali
mount --bind "$1/vartmp" /var/tmp
virtlogd -d -p /run/libvirt/virtlogd.pid
exec ip netns exec "$2" libvirtd -d -p /run/libvirt/libvirtd.pid
"""

_serial = itertools.count()


class RemoteHost:
    """A libvirtd in its own network and mount namespaces, all its state under root. root need
    not be traversable by libvirt-qemu (qemu reaches the directories under it through the bind
    mounts, where only their own modes count): pytest's 0700 tmp_path will do."""

    def __init__(self, root: Path, start_timeout: float = 30) -> None:
        self.root = Path(root).resolve()
        self.netns = f"dali-remote-{os.getpid()}-{next(_serial)}"
        self.data_root = self.root / "data"
        self.start_timeout = start_timeout
        self.socket = self.root / "run" / "libvirt-sock"
        if len(str(self.socket)) > 107:  # sun_path is 108 bytes with its NUL
            raise ValueError(f"{self.socket}: too long for a unix socket; pick a shorter root")
        self._netns_ino: int | None = None  # set once the namespace is ours to delete
        self._mntns: str | None = None  # "mnt:[...]" of virtlogd's namespace

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def libvirtd_pid(self) -> int:
        return int((self.root / "run" / "libvirtd.pid").read_text())

    def __enter__(self) -> RemoteHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()  # leave nothing of a start that failed halfway
            raise

    def _start(self) -> None:
        if self._netns_ino is not None:  # running already
            return
        for name in [*BINDS, "vartmp"]:
            (self.root / name).mkdir(parents=True, exist_ok=True)
            # Modes of the real directories: qemu (libvirt-qemu) must traverse lib and data.
            (self.root / name).chmod(0o1777 if name == "vartmp" else 0o755)
        subprocess.run(["cp", "-a", "/etc/libvirt/.", f"{self.root}/etc/"], check=True)
        for pattern in DEFINITIONS:
            for path in (self.root / "etc").glob(pattern):
                path.unlink()
        # The main daemon's qemu capabilities: the same qemu on the same kernel, so libvirt
        # accepts them (it re-probes what is stale). Without them the first call to the daemon
        # probes the emulator, ~8 s here instead of ~0.3 s for the whole start.
        caps = Path("/var/cache/libvirt/qemu/capabilities")
        if caps.is_dir():
            shutil.copytree(caps, self.root / "cache/qemu/capabilities", dirs_exist_ok=True)

        # Before unshare: a namespace added later would not show in the private copy of
        # /run/netns. Before the mount point below too: stop() leaves that to the last instance,
        # which it tells by these namespaces.
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self._netns_ino = os.stat(f"/run/netns/{self.netns}").st_ino
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        if not DATA_MOUNT.exists():  # a bind needs a mount point
            try:
                DATA_MOUNT.mkdir(mode=0o755)
                DATA_MOUNT_MADE.touch()
            except FileExistsError:  # another RemoteHost made it meanwhile
                pass

        # Both daemons fork into the background (-d) and the shell returns once libvirtd is up;
        # the mount namespace lives on with them.
        began = time.monotonic()
        shell = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                  "sh", "-c", _SCRIPT, "sh", str(self.root), self.netns],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._mntns = shell.stdout.readline().strip() or None  # known before any daemon starts
        try:
            _, err = shell.communicate(timeout=self.start_timeout)
        except subprocess.TimeoutExpired:
            shell.kill()
            shell.wait()
            raise
        if shell.returncode != 0:
            raise RuntimeError(f"starting the remote libvirtd failed (exit {shell.returncode}): "
                               f"{err.strip()}")

        # The socket is there before the drivers are: the first call waits for them.
        while True:
            left = self.start_timeout - (time.monotonic() - began)
            try:
                if subprocess.run(["virsh", "-q", "-c", self.uri, "version"], capture_output=True,
                                  timeout=max(left, 1)).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - began > self.start_timeout:
                raise TimeoutError(f"remote libvirtd did not answer on {self.uri} within "
                                   f"{self.start_timeout:.0f} s; see {self.root}/log/libvirtd.log")
            time.sleep(0.2)

    def run(self, *argv: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """argv in the daemon's mount namespace: the remote host's files (not its network)."""
        return subprocess.run(["nsenter", "-t", str(self.libvirtd_pid), "-m", "--", *argv],
                              capture_output=True, text=True, check=check, timeout=timeout)

    def stop(self) -> None:
        """Remove what this daemon made and end it. Idempotent, and safe after a failed start."""
        self._clean_libvirt()
        # Through libvirt first, so that qemu and dnsmasq are ended by their owner; then the
        # daemons, then whatever is still inside our namespaces (after a failed start or a hung
        # daemon). Only processes in THIS instance's namespaces are ever signalled: the main
        # libvirtd lives in network namespace "dali", its virtlogd in the host's mount namespace.
        pids = [p for p in (self._pid_from("libvirtd"), self._pid_from("virtlogd")) if p]
        self._end(pids)
        self._end(self._members())
        if self._netns_ino is not None:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
            self._netns_ino = None
        # rmdir would detach another instance's bind on DATA_MOUNT (even in its own mount
        # namespace), so it is the last running instance that removes it, whoever made it.
        others = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        if DATA_MOUNT_MADE.exists() and "dali-remote-" not in others:
            try:
                DATA_MOUNT.rmdir()
            except OSError:  # not empty: a real cluster of this machine's lives there now
                pass
            DATA_MOUNT_MADE.unlink(missing_ok=True)
        for pidfile in ("libvirtd.pid", "virtlogd.pid"):
            (self.root / "run" / pidfile).unlink(missing_ok=True)
        # The mounts went with the last process of the mount namespace; root stays for its owner.

    def _clean_libvirt(self) -> None:
        if not self.socket.exists() or not self._pid_from("libvirtd"):
            return
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return
        try:
            undefine_domain = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                               | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                               | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            for obj in [*conn.listAllDomains(), *conn.listAllNetworks(), *conn.listAllStoragePools()]:
                try:  # both asked first: a transient object is gone once destroyed
                    active, persistent = obj.isActive(), obj.isPersistent()
                except libvirt.libvirtError:  # gone meanwhile
                    continue
                # One object that fails must not stop the rest (the kill below ends its processes).
                with contextlib.suppress(libvirt.libvirtError):
                    if active:
                        obj.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    if persistent:
                        if isinstance(obj, libvirt.virDomain):
                            obj.undefineFlags(undefine_domain)
                        else:
                            obj.undefine()
        finally:
            conn.close()

    def _pid_from(self, daemon: str) -> int | None:
        """The daemon's pid from its pid file, if that process is alive and ours."""
        try:
            pid = int((self.root / "run" / f"{daemon}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if pid in self._members() else None

    def _members(self) -> list[int]:
        """Live processes in this instance's network or mount namespace."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ours = ((self._netns_ino is not None and (entry / "ns/net").stat().st_ino == self._netns_ino)
                        or (self._mntns is not None and os.readlink(entry / "ns/mnt") == self._mntns))
                if ours and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:  # exited meanwhile, or a kernel thread
                continue
        return found

    def _end(self, pids: list[int], grace: float = 10) -> None:
        """SIGTERM, wait, then SIGKILL what is left; wait until they are gone."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            pids = [p for p in pids if _alive(p)]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent (pid 1 here) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

