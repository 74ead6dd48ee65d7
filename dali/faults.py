"""Faults in the middle of a run, from the host: a node forced off (`--crash NODE@SECONDS`, as
pulling the plug) or cut from the network (`--partition NODE@SECONDS+DURATION`: its link down,
then up again).

A partition cuts only the network. The shared device stays reachable from the cut-off node,
which is the case a shared-memory filesystem must survive and a shared-disk one rarely meets.
dali owns the network, so it cuts the link from outside the guest (libvirt's <link
state='down'/> on the node's interface): the guest sees its carrier go, as with a pulled cable,
and nothing in it has to cooperate. The victim is left as it is afterwards; `doit start NODE`
brings a node that was forced off back.
"""

from __future__ import annotations

import re
import threading
import time
import xml.etree.ElementTree as ET
from typing import NamedTuple

import libvirt

from dali.errors import DaliError
from dali.reporter import log


class Fault(NamedTuple):
    kind: str  # "crash" or "partition"
    node: str  # the node's name
    at: float  # seconds from the run's start
    duration: float  # a partition's; 0 for a crash

    def describe(self) -> str:
        if self.kind == "crash":
            return f"{self.node} forced off at {self.at:g} s"
        return f"{self.node} cut from the network at {self.at:g} s for {self.duration:g} s"


# Numbers of 0-9 only: \d also takes other scripts' digits, which float() reads as a number
# nobody typed.
_SPEC = {"crash": re.compile(r"^([\w.-]+)@([0-9]+(?:\.[0-9]+)?)$"),
         "partition": re.compile(r"^([\w.-]+)@([0-9]+(?:\.[0-9]+)?)\+([0-9]+(?:\.[0-9]+)?)$")}
_FORM = {"crash": "NODE@SECONDS (--crash c@10)", "partition": "NODE@SECONDS+DURATION (--partition c@10+20)"}
# The longest a run, or a partition in it, may last: a week of soak is far beyond any test, and
# far below what a thread can wait for at once (threading.TIMEOUT_MAX, 292 years: a longer wait
# raises OverflowError).
LONGEST = 7 * 24 * 3600


def parse(kind: str, spec: str, resolve, seconds: float) -> Fault:
    """One --crash or --partition; resolve(name) gives the node's name or raises DaliError."""
    m = _SPEC[kind].match(spec)
    if not m:
        raise DaliError(f"--{kind} {spec}: give {_FORM[kind]}")
    at = float(m.group(2))
    duration = float(m.group(3)) if kind == "partition" else 0.0
    if at >= seconds:
        raise DaliError(f"--{kind} {spec}: {at:g} s is not within the run's {seconds:g} s: "
                        "pick an earlier time or raise --seconds")
    if kind == "partition" and duration <= 0:
        raise DaliError(f"--partition {spec}: the duration must be more than 0 s")
    if duration > LONGEST:
        raise DaliError(f"--partition {spec}: a partition lasts at most {LONGEST} s (a week): "
                        "give a shorter DURATION")
    return Fault(kind, resolve(m.group(1)), at, duration)


def check_plan(faults: list[Fault]) -> None:
    crashed = {}
    for f in sorted(faults, key=lambda f: f.at):
        if f.node in crashed and f.at >= crashed[f.node]:
            raise DaliError(f"{f.describe()}: it is forced off at {crashed[f.node]:g} s already")
        if f.kind == "crash":
            crashed[f.node] = f.at


def set_link(dom: libvirt.virDomain, up: bool) -> None:
    """The node's network link up or down, on the running domain only."""
    xml = ET.fromstring(dom.XMLDesc(0))
    iface = xml.find("devices/interface")
    if iface is None:
        raise DaliError(f"{dom.name()} has no network interface to cut")
    link = iface.find("link")
    if link is None:
        link = ET.SubElement(iface, "link")
    link.set("state", "up" if up else "down")
    dom.updateDeviceFlags(ET.tostring(iface, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)


def link_is_down(dom: libvirt.virDomain) -> bool:
    link = ET.fromstring(dom.XMLDesc(0)).find("devices/interface/link")
    return link is not None and link.get("state") == "down"


def heal(doms) -> list[str]:
    """Links a run killed in the middle of a partition left down, brought up: the names."""
    healed = []
    for _, dom in doms:
        if dom.isActive() and link_is_down(dom):
            set_link(dom, True)
            healed.append(dom.name())
    return healed


class Injector:
    """Runs the faults on time from a thread, and records when each really happened."""

    def __init__(self, faults: list[Fault], domains: dict[str, libvirt.virDomain]):
        self.faults = faults
        self.domains = domains
        self.happened: list[tuple[float, str]] = []  # (seconds from start, what)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, t0: float) -> None:
        events = []
        for f in self.faults:
            if f.kind == "crash":
                events.append((f.at, f, "crash"))
            else:
                events += [(f.at, f, "down"), (f.at + f.duration, f, "up")]
        events.sort(key=lambda e: e[0])
        self._thread = threading.Thread(target=self._run, args=(t0, events), daemon=True)
        self._thread.start()

    def _run(self, t0: float, events) -> None:
        cut: list[Fault] = []  # the partitions whose link this thread has taken down, not yet up
        try:
            self._inject(t0, events, cut)
        except Exception as e:  # whatever stops it (a wait too long for the clock): the run fails with it
            self.errors.append(f"injecting the faults stopped: {_why(e)}")
        finally:
            for fault in list(cut):  # a node is never left cut off, whatever happened above
                self._do(t0, fault, "up", cut)

    def _inject(self, t0: float, events, cut: list[Fault]) -> None:
        for at, fault, what in events:
            stopped = self._stop.wait(max(0.0, t0 + at - time.monotonic()))
            if what == "up" and fault not in cut:
                continue  # its link never went down: the run ended first, or cutting it failed
            if stopped and what != "up":
                continue  # the run ended first; a link that went down still comes back up
            self._do(t0, fault, what, cut)

    def _do(self, t0: float, fault: Fault, what: str, cut: list[Fault]) -> None:
        """One step of a fault (crash, down, up), recorded as it happened or as an error. A link
        is asked up once: one that stays down is an error, and the next doit torture heals it."""
        if what == "up":
            cut.remove(fault)
        when = round(time.monotonic() - t0, 2)  # as it is asked for: a destroy takes a second
        try:
            dom = self.domains[fault.node]
            if what == "crash":
                dom.destroy()
            else:
                set_link(dom, what == "up")
        except Exception as e:  # any: the thread goes on with the other faults, and brings links up
            self.errors.append(f"{fault.node}: {what}: {_why(e)}")
            return
        if what == "down":
            cut.append(fault)
        text = f"{fault.node} forced off" if what == "crash" else f"{fault.node} link {what}"
        self.happened.append((when, text))
        log(f"torture: {text} at {when:.1f} s")

    def finish(self) -> None:
        """Let pending link-ups happen (a partition never outlives the run), skip the rest."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _why(e: Exception) -> str:
    if isinstance(e, libvirt.libvirtError):
        return e.get_error_message()
    return str(e) if isinstance(e, DaliError) else f"{type(e).__name__}: {e}"
