"""The thin libvirt adapter: every call dali makes to libvirtd goes through here.

It knows three things the stages should not have to: how to open the connection once (lazily,
so `doit list` works without libvirtd), how to refuse an object with one of our names that
does not carry our mark (dali/marks.py), and how to talk to a guest through its
qemu-guest-agent (no network needed).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

import libvirt

from dali.cluster import is_remote
from dali.errors import DaliError
from dali.steps import Checking
from dali.marks import MARK_NS, describe, mark_of
from dali.reporter import log
from dali.text import visible_line


class ForeignObject(DaliError):
    """A libvirt object with one of our names that dali did not create."""


class ExecResult(NamedTuple):
    """What a command run in the guest returned: exit code, stdout and stderr together."""
    exitcode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> "ExecResult":
        if self.exitcode != 0:
            raise DaliError(f"{what} failed in the guest (exit {self.exitcode}): "
                            f"{visible_line(self.stderr or self.stdout)[:300]}")
        return self


def _qemu_process(name: str) -> tuple[int, int] | None:
    """The pid of a local domain's qemu and when it started, in clock ticks since the host's boot."""
    try:
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        return pid, int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


GONE = object()  # what unless_gone returns for an object libvirt no longer has


def unless_gone(call, gone: int = libvirt.VIR_ERR_NO_DOMAIN, default=GONE):
    """call(), or `default` if libvirt answers that the object is gone (error code `gone`):
    other people's domains and networks come and go while dali looks at them, and one that
    vanished between a listing and the next question about it is simply not there."""
    try:
        return call()
    except libvirt.libvirtError as e:
        if e.get_error_code() == gone:
            return default
        raise


class Libvirt:
    """The connection, and the cluster (owner) whose mark every object dali touches must carry.

    One thing is not visible where it is called: inside a doit uptodate check (dali/steps.py
    `uptodate`, which every check of tasks/*.py goes through), domain() and our_domains()
    answer from one listing of the host's domains shared by all the checks until an action
    starts; inside an action, from libvirt at that moment. Checks only look, and a doit that
    changes nothing asks the same questions dozens of times; actions decide what to change or
    delete from what libvirt says now. Passing the view down every check instead would put it
    in fifty signatures for this one rule."""

    def __init__(self, uri: str, owner: str):
        """`owner` is the cluster id (dali/cluster.py) that every object we touch must carry."""
        self.uri = uri
        self.owner = owner
        self._conn: libvirt.virConnect | None = None
        self._for_checks: dict = {}  # shared_by_checks: {key: (actions started, value)}
        # Where start() writes when it started a domain, for a libvirtd on another host (on this
        # machine the qemu process says: started_at).
        self.starts_file = None
        self._starts_lock = threading.Lock()

    @classmethod
    def of(cls, cluster) -> "Libvirt":
        """The cluster's connection (dodo.py makes it once and hands it to every stage): for a
        libvirtd on another host, with the file where start() notes when it started a domain,
        as that host's qemu processes are out of reach."""
        virt = cls(cluster.uri, cluster.id)
        if is_remote(cluster.uri):
            virt.starts_file = cluster.state_dir / "starts.json"
        return virt

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            # libvirt prints every error to stderr by default, also the ones we expect and
            # handle ("domain not found" while asking whether it exists). Silenced here, when
            # dali connects, not on import: importing dali must not change a process's libvirt.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as e:
                raise DaliError(f"libvirtd is not reachable at {self.uri} ({e.get_error_message()}): "
                                "run scripts/setup, which starts it, or set uri / LIBVIRT_DEFAULT_URI")
        return self._conn

    # --- ownership ----------------------------------------------------------------------------

    def _marked_ours(self, found: dict | None) -> bool:
        return found is not None and found.get("id") == self.owner

    def _check_ours(self, kind: str, name: str, found: dict | None) -> None:
        if not self._marked_ours(found):
            raise ForeignObject(f"libvirt {kind} '{name}' already exists and belongs to "
                                f"{describe(found)}: rename or remove it, or pick another "
                                "tag / network.name")

    def _lookup(self, kind: str, lookup, not_found: int, name: str):
        """Our object of that name, None if there is none; ForeignObject if it is not ours."""
        obj = unless_gone(lambda: lookup(name), not_found, default=None)
        if obj is None:
            return None
        # Flag 0: the test driver takes no INACTIVE flag for networks; the mark is in both.
        self._check_ours(kind, name, mark_of(obj.XMLDesc(0)))
        return obj

    def domain(self, name: str) -> libvirt.virDomain | None:
        listed = self._listed_for_checks()
        if listed is None:
            return self._lookup("domain", self.conn.lookupByName, libvirt.VIR_ERR_NO_DOMAIN, name)
        if name not in listed:
            return None
        dom, found = listed[name]
        self._check_ours("domain", name, found)
        return dom

    def network(self, name: str) -> libvirt.virNetwork | None:
        return self._lookup("network", self.conn.networkLookupByName, libvirt.VIR_ERR_NO_NETWORK, name)

    def our_domains(self) -> dict[str, libvirt.virDomain]:
        """Every domain carrying this cluster's mark, by name (to find nodes no longer configured)."""
        listed = self._listed_for_checks()
        if listed is None:
            listed = self._list_domains()
        return {name: dom for name, (dom, found) in listed.items() if self._marked_ours(found)}

    def _list_domains(self) -> dict[str, tuple[libvirt.virDomain, dict | None]]:
        """Every domain on the host with its mark, but those that vanish while we look."""
        listed = {}
        for dom in self.conn.listAllDomains():
            mark = unless_gone(lambda: self._domain_mark(dom))
            if mark is not GONE:
                listed[dom.name()] = (dom, mark)
        return listed

    @staticmethod
    def _domain_mark(dom: libvirt.virDomain) -> dict | None:
        """A domain's mark, asked for alone: its element is a hundredth of the domain's XML."""
        try:
            element = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, MARK_NS, 0)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise
        return dict(ET.fromstring(element).attrib)

    def shared_by_checks(self, key, make):
        """make(), asked once by all the uptodate checks that run before the next action starts
        and shared by them (dali/steps.py: Checking); outside checks, asked every time."""
        if not Checking.active:
            return make()
        found = self._for_checks.get(key)
        if found is None or found[0] != Checking.actions_started:
            found = self._for_checks[key] = (Checking.actions_started, make())
        return found[1]

    def _listed_for_checks(self) -> dict | None:
        """While an uptodate check runs, every domain and its mark, listed once and shared by the
        checks until the next action starts (dali/steps.py: Checking); None outside checks."""
        return self.shared_by_checks("domains", self._list_domains) if Checking.active else None

    def _all_domains(self, *flags: int):
        """(domain, its XML for each flag) of every domain on the host, but those that vanish
        while we look (other people's domains come and go)."""
        for dom in self.conn.listAllDomains():
            xmls = unless_gone(lambda: [dom.XMLDesc(f) for f in flags])
            if xmls is not GONE:
                yield (dom, *xmls)

    def domains_using(self, path) -> list[str]:
        """Every domain, ours or not, whose definition names the file `path` (a disk, a
        kernel, a FAM in qemu:commandline or an nvdimm): a file one of them uses is not deleted."""
        needle = str(path)

        def names_it(value: str) -> bool:  # "/x/FAM", or "...,mem-path=/x/FAM,size=1G,..."
            return any(part.split("=", 1)[-1] == needle for part in value.split(","))

        users = []
        # The running definition too: a redefined node uses its old files until it restarts.
        for dom, *xmls in self._all_domains(libvirt.VIR_DOMAIN_XML_INACTIVE, 0):
            if any(names_it(v) for xml in xmls for e in ET.fromstring(xml).iter()
                   for v in [e.text or "", *e.attrib.values()]):
                users.append(dom.name())
        return users

    def network_subnets(self) -> dict[str, ipaddress.IPv4Network]:
        """Each libvirt network's IPv4 subnet, by network name (two networks cannot share one)."""
        subnets = {}
        for net in self.conn.listAllNetworks():
            xml = unless_gone(lambda: net.XMLDesc(0), libvirt.VIR_ERR_NO_NETWORK)
            if xml is GONE:
                continue
            ip = ET.fromstring(xml).find("ip")
            if ip is not None and ip.get("address") and ":" not in ip.get("address"):
                prefix = ip.get("prefix") or ip.get("netmask") or "24"
                subnets[net.name()] = ipaddress.IPv4Network(f"{ip.get('address')}/{prefix}", strict=False)
        return subnets

    # --- definitions --------------------------------------------------------------------------

    def define_domain(self, xml: str) -> libvirt.virDomain:
        """Define (or redefine) after checking the XML against libvirt's schema."""
        try:
            return self.conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        except libvirt.libvirtError as e:
            raise DaliError(f"libvirt refused the domain XML: {e.get_error_message()}")

    def define_network(self, xml: str) -> libvirt.virNetwork:
        try:
            return self.conn.networkDefineXML(xml)
        except libvirt.libvirtError as e:
            raise DaliError(f"libvirt refused the network XML: {e.get_error_message()}")

    def start_network(self, net: libvirt.virNetwork) -> None:
        try:
            net.create()
        except libvirt.libvirtError as e:
            raise DaliError(f"starting network {net.name()} failed: {e.get_error_message()}: if "
                            "another network or interface has its subnet, set network.address "
                            "to a free one, or leave it empty for dali to pick one") from None

    # --- domain life cycle --------------------------------------------------------------------

    def is_active(self, name: str) -> bool:
        """Whether the domain of that name (anyone's) runs now; False if it is gone."""
        return unless_gone(lambda: bool(self.conn.lookupByName(name).isActive()), default=False)

    @staticmethod
    def is_running(dom: libvirt.virDomain) -> bool:
        return dom.state()[0] not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)

    def start(self, dom: libvirt.virDomain) -> None:
        if self.is_running(dom):
            return
        try:
            dom.create()
        except libvirt.libvirtError as e:
            raise DaliError(f"starting {dom.name()} failed: {e.get_error_message()}")
        if self.starts_file is not None:
            self._record_start(dom)

    def _record_start(self, dom: libvirt.virDomain) -> None:
        """{name: [libvirt's id of this run, when it started]}: an id that no longer matches
        is a run started otherwise (virsh start), whose start time is not known."""
        with self._starts_lock:  # nodes boot side by side, each thread noting its own start
            try:
                starts = json.loads(self.starts_file.read_text())
            except (OSError, ValueError):
                starts = {}
            starts[dom.name()] = [dom.ID(), time.time()]
            tmp = self.starts_file.with_name(self.starts_file.name + ".new")
            tmp.write_text(json.dumps(starts))
            tmp.replace(self.starts_file)

    def started_at(self, dom: libvirt.virDomain) -> float | None:
        """When this run of the domain started (the host's clock): from its qemu process where
        libvirtd runs on this machine (no agent needed); on another host, when start() started
        it, if it did (see _record_start: its qemu process is out of reach)."""
        if self.starts_file is None:
            process = _qemu_process(dom.name())
            try:
                boot = float(Path("/proc/uptime").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
            return None if process is None else time.time() - boot + process[1] / os.sysconf("SC_CLK_TCK")
        try:
            run_id, when = json.loads(self.starts_file.read_text())[dom.name()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return when if run_id == dom.ID() else None

    def run_of(self, dom: libvirt.virDomain) -> str | None:
        """Which run of a running domain this is: the same string for as long as its qemu runs,
        and another for its next start, even after the host rebooted. Here: the host's boot id
        and the qemu process (pid, start tick). On another host: libvirt's id for the run with
        the time dali started it; None for a run dali did not start (virsh start), which cannot
        be told apart from another."""
        if self.starts_file is not None:
            started = self.started_at(dom)
            return None if started is None else f"{dom.ID()} {started}"
        process = _qemu_process(dom.name())
        try:
            host_boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return None
        return None if process is None else f"{host_boot} {process[0]} {process[1]}"

    # What the guest agent runs for a shutdown: an orderly one; or, for a node with nothing
    # to stop but its processes (the original, which has only made its namespace), systemd's
    # forced one, which still unmounts the file systems cleanly, in about a second.
    GRACEFUL = ("poweroff", "--no-block")  # --no-block: the agent must not wait on its own end
    QUICK = ("poweroff", "--force")

    def shutdown(self, dom: libvirt.virDomain, timeout: int, log=log, how: tuple = GRACEFUL) -> str:
        """Power-off through the node's own systemd (`systemctl` + `how`), forced after
        `timeout` seconds. Returns how it ended.

        Asked two ways at once:
        - the guest agent, if it answers, runs `systemctl poweroff`: PID 1 acts on it at any
          point of a boot. A node shut down right after its agent answered is off about 4 s
          later, where the power button took 8-9: logind, which acts on the button, starts
          late in a boot;
        - the ACPI power button, pressed every second, for a node without an agent (a user's
          own image) or with a stuck one: a press a booting node has no logind for yet is
          lost, so it is pressed again; one during the shutdown is ignored, as one already
          under way.
        """
        if not self.is_running(dom):
            if dom.isActive():  # crashed, kept stopped by on_crash=preserve: nothing to ask
                dom.destroy()
                return "crashed; forced off"
            return "already off"
        try:
            self.agent(dom, "guest-exec", timeout=5, path="systemctl", arg=list(how))
        except libvirt.libvirtError:
            pass  # no agent, or not yet: the button does it
        deadline = time.monotonic() + timeout
        next_press = 0.0
        while time.monotonic() < deadline:
            if not self.is_running(dom):
                return "shut down"
            if time.monotonic() >= next_press:
                try:
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError:
                    pass  # it may have just stopped; the loop checks
                next_press = time.monotonic() + 1
            time.sleep(0.25)
        log(f"{dom.name()}: no power-off after {timeout} s of graceful shutdown; forcing it off")
        try:
            dom.destroy()
        except libvirt.libvirtError:
            if self.is_running(dom):
                raise
        return "forced off"

    # --- memory and device state (dali/snapshot.py, docs/snapshots.md) ------------------------

    def save_memory(self, dom: libvirt.virDomain, path: Path) -> None:
        """A paused domain's memory and device state into the file `path`, the domain left
        paused and its qemu running: libvirt's external memory snapshot with no disk in it and
        no metadata kept (nothing of it stays with the domain, which would stop its undefine).
        libvirt writes it as virDomainSave does (qemuSaveImageCreate), so virDomainRestore
        reads it back (restore_paused)."""
        dom.snapshotCreateXML(memory_only_snapshot(dom.XMLDesc(0), path),
                              libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)

    def restore_paused(self, path: Path) -> None:
        """The domain saved in `path` (save_memory) running again, paused: a new qemu on the
        domain's definition as it was saved. Its persistent definition stays as it is."""
        self.conn.restoreFlags(str(path), None, libvirt.VIR_DOMAIN_SAVE_PAUSED)

    @staticmethod
    def definition(dom: libvirt.virDomain) -> str:
        """A digest of the domain's persistent definition: what it boots, or is restored onto.
        The security labels libvirt adds as it starts a domain are left out."""
        return definition_digest(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    @staticmethod
    def live_only_disks(dom: libvirt.virDomain) -> list[str]:
        """The disks of a running domain that its persistent definition does not have (one
        attached live: --compare-disk's shared disk), by target."""
        def targets(xml: str) -> set[str]:
            return {t.get("dev") for t in ET.fromstring(xml).iterfind("devices/disk/target")}
        return sorted(targets(dom.XMLDesc(0)) - targets(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))

    def set_clock(self, dom: libvirt.virDomain, wait: float = 5) -> None:
        """The guest's wall clock set to the host's (guest-set-time through its agent): a node
        paused or restored from a snapshot runs with the time it stopped at. A node just
        restored may take a moment before libvirt sees its agent again: asked for `wait` s."""
        deadline = time.monotonic() + wait
        while True:
            when = time.time()
            try:
                dom.setTime({"seconds": int(when), "nseconds": int(when % 1 * 1e9)}, 0)
                return
            except libvirt.libvirtError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)

    # --- guest agent --------------------------------------------------------------------------

    def agent(self, dom: libvirt.virDomain, command: str, timeout: int = 10, **arguments):
        import libvirt_qemu  # here, not above: only a doit that talks to guests loads it (1.5 ms)
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(msg), timeout, 0)
        return json.loads(reply)["return"]

    def agent_answers(self, dom: libvirt.virDomain) -> bool:
        try:
            self.agent(dom, "guest-ping", timeout=2)
            return True
        except libvirt.libvirtError:
            return False

    def wait_for_agent(self, dom: libvirt.virDomain, timeout: int, log=log, crashed=None) -> float:
        """Block until the guest agent answers; one progress line every 15 s. Returns seconds.
        crashed(): why the node died while booting (its console's panic), or None; asked every
        2 s, so a kernel that panics early fails the wait at once, not after timeouts.boot."""
        t0 = time.monotonic()
        next_note, next_look = 15.0, 2.0
        while not self.agent_answers(dom):
            waited = time.monotonic() - t0
            if crashed is not None and waited >= next_look:
                next_look += 2
                why = crashed()
                if why:
                    raise DaliError(f"{dom.name()} died while booting ({visible_line(why)}): doit start "
                                    "keeps its console and memory and boots it again")
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                raise DaliError(f"{dom.name()} is paused (a debugger attached to its gdb stub stops "
                                f"it): detach, or virsh resume {dom.name()}")
            if not self.is_running(dom):
                raise DaliError(f"{dom.name()} stopped while booting: see "
                                f"/var/log/libvirt/qemu/{dom.name()}.log and {dom.name()}-console.log")
            if waited > timeout:
                raise DaliError(f"{dom.name()}: guest agent silent after {timeout} s: see "
                                f"/var/log/libvirt/qemu/{dom.name()}-console.log, or raise timeouts.boot")
            if waited >= next_note:
                log(f"{dom.name()}: booting, waiting for the guest agent ({waited:.0f} s of {timeout} s)")
                next_note += 15
            # A silent agent fails at once (libvirt: "not connected"): asking 4 times a second
            # costs the host nothing, and a boot that is done is noticed 0.4 s sooner on average.
            time.sleep(0.25)
        return time.monotonic() - t0

    def run(self, dom: libvirt.virDomain, argv: list[str], timeout: float = 120,
            stdin: bytes | None = None, env: dict[str, str] | None = None) -> ExecResult:
        """Run argv in the guest through guest-exec; wait for it and return its result. env
        replaces the agent's environment (PATH included) for the command."""
        args = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin).decode()
        if env is not None:
            args["env"] = [f"{k}={v}" for k, v in env.items()]
        pid = self.agent(dom, "guest-exec", **args)["pid"]
        deadline = time.monotonic() + timeout
        # Most commands are done in a few hundredths of a second, even under TCG: asked soon,
        # then less and less often (every 0.2 s at most), where a fixed 0.2 s made each of the
        # hundreds of commands a doit sends cost at least that.
        pause = 0.01
        while True:
            status = self.agent(dom, "guest-exec-status", pid=pid)
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise DaliError(f"{dom.name()}: '{' '.join(argv)}' still running after {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        decode = lambda key: base64.b64decode(status.get(key, "")).decode(errors="replace")
        return ExecResult(status.get("exitcode", -1), decode("out-data"), decode("err-data"))


# --- memory files -----------------------------------------------------------------------------

def memory_only_snapshot(domain_xml: str, path: Path) -> str:
    """A <domainsnapshot> that saves the domain's memory and device state into `path` and none
    of its disks (each disk snapshot="no"): dali copies the disks itself, while every node is
    paused."""
    domain = ET.fromstring(domain_xml)
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = f"dali-{domain.findtext('name')}"
    ET.SubElement(root, "memory", snapshot="external", file=str(path))
    disks = ET.SubElement(root, "disks")
    for target in domain.iterfind("devices/disk/target"):
        ET.SubElement(disks, "disk", name=target.get("dev"), snapshot="no")
    return ET.tostring(root, encoding="unicode")


def definition_digest(xml: str) -> str:
    root = ET.fromstring(xml)
    for parent in list(root.iter()):
        for label in parent.findall("seclabel"):
            parent.remove(label)
    return hashlib.sha256(ET.canonicalize(ET.tostring(root, encoding="unicode"),
                                          strip_text=True).encode()).hexdigest()


SAVE_MAGIC = b"LibvirtQemudSave"  # libvirt's save image header (qemu_saveimage.h)
SAVE_HEADER = 16 + 4 * 19  # the magic and 19 words; the XML follows


def memory_file_domain(path: Path) -> str | None:
    """The name of the domain a whole memory file (libvirt's save image) holds, from its header:
    magic[16], then 19 32-bit words (the host's order: version, data_len, was_running,
    compressed, cookie_offset, unused[14]), then the domain's XML at byte 92 (read in a save
    libvirt 9.0 wrote for a memory snapshot). libvirt writes the magic of a whole image last (a
    partial one says LibvirtQemudPart). None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(SAVE_HEADER)
            if len(head) < SAVE_HEADER or head[:16] != SAVE_MAGIC:
                return None
            length = int.from_bytes(head[20:24], sys.byteorder)
            xml = f.read(min(length, 16 << 20)).split(b"\0", 1)[0].decode(errors="replace")
        return ET.fromstring(xml).findtext("name")
    except (OSError, ET.ParseError):
        return None
