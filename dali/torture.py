"""`doit torture [WORKLOAD ...]`: workloads on every running node at once against the shared
device, checked; faults injected in the middle; the evidence kept.

A run, in order:
1. The plan, checked whole before anything starts (one line and a non-zero exit otherwise):
   the workloads and their parameters, the nodes (running, answering), the target (the mounted
   filesystem when fs.type is set, else the raw device), the faults, the script.
2. Each node gets the workloads (dali/workloads/, one zip file, run by the node's python3) and
   the script. On a raw device the bytes the run may overwrite are saved first (dali/fam.py:
   a run killed before it puts them back has them put back by the next run, verify or doit)
   and zeroed.
3. Every workload runs on every node at once, through the guest agent, for --seconds; the
   faults happen on time from the host (dali/faults.py).
4. Every node still up checks what it sees (every workload in turn, in one python3 of the
   node's); each workload's judge compares that with what the runs did. The consoles are
   scanned for panics, oopses and hangs (dali/consoles.py).
5. The report (dali/torture_report.py) is printed and kept under state/<tag>/runs/<time>/.
   The run fails (exit 1) on any violation or any node that failed.
With --from NAME, every run (each of --count) starts with `doit rollback NAME`
(dali/snapshot.py), and the workloads are shipped again.
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple, Protocol

import libvirt

from dali import consoles, fam, faults, guest, known_failures, report_page, shared_disk, snapshot, workloads
from dali.cluster import REPO, Cluster, Node
from dali.coherence import command as coherence
from dali.errors import DaliError, one_line
from dali.fanout import each
from dali.lifecycle import running
from dali.reporter import log
from dali.storage import Storage
from dali.text import is_digits, visible_line
from dali.torture_report import Outcome, Report, Results, Status
from dali.verify import refuse_to_write
from dali.virt import ExecResult, Libvirt
from dali.workloads.common import Context, Verdict
from dali.workloads.guest import RESULT

DEFAULT_SECONDS = 30
MAX_COUNT = 10000  # --count: runs in one command (hundreds find a flaky bug; each is a directory)
PROGRAM = "/run/dali-torture.pyz"  # on each node: the workloads; /run is a tmpfs, gone at reboot
SCRIPT = "/var/lib/dali-torture/script"  # not in /run: Debian mounts it noexec
DAX_ALIGN = 2 << 20  # device-dax maps whole 2 MiB pages: every area starts on one
GRACE = 600  # seconds a node may take beyond --seconds: an OCFS2 recovery stalls for a minute
# Every node begins at the same moment, after its setup (starting python, the first mkdir on the
# filesystem, each workload a python of its own): that long after the launch. A node that is not ready by then begins late, and
# says by how much (the report's "late"); faults are timed from the common start.
LEAD, LEAD_PER_JOB = 4.0, 3.0  # measured: 4 workloads on 3 one-vCPU nodes under TCG were ready after 8-12 s


class Workload(Protocol):
    """What a run asks of each of its workloads, the same of all: a checker of dali/workloads
    (Checker) or your --script (Script). args: the node's part in the run (_args).

    The checks after the run are not asked of each workload: every checked workload is a
    module of the one program shipped to the nodes, so each node checks them all in one
    python3 (_check_node), which one workload alone could not arrange."""
    NAME: str
    DOC: str
    NEEDS: tuple[str, ...]  # the targets it runs on: "dir", "block", "dax"
    WHY_NOT: dict[str, str]  # {target: why it does not run there}
    PARAMS: dict
    OWN_DIRECTORY: bool  # it works in <target>/.dali-torture-<run>/<NAME> (kept if it found violations)
    CHECKED: bool  # every node still up checks it after the run, its module's check() (_check_all)

    def area_size(self, nodes: int, params: dict) -> int:
        """The bytes of a device it works on (0: none of them)."""

    def run(self, virt: Libvirt, dom, args: dict, t0: float) -> tuple[dict | None, str, str]:
        """On one node, from now until the common start (t0, the host's monotonic clock) plus
        --seconds: (what it returned, what it printed, why it failed or "")."""

    def judge(self, ctx: Context, states: dict, checks: dict) -> Verdict:
        """Here: the violations the runs' states and the nodes' checks show together ({node:
        what it saw, None if its check failed}; {} from each node for one not CHECKED)."""


class Checker:
    """A module of dali/workloads as the run drives it: run by each node's python3 from the zip
    (its setup first, then the common start), checked by every node still up (with the run's
    other checkers, _check_node), judged here."""
    OWN_DIRECTORY = True
    CHECKED = True

    def __init__(self, module):
        self.module = module
        self.NAME, self.DOC, self.NEEDS, self.PARAMS = module.NAME, module.DOC, module.NEEDS, module.PARAMS
        self.WHY_NOT = getattr(module, "WHY_NOT", {})

    def area_size(self, nodes: int, params: dict) -> int:
        return self.module.area_size(nodes, params) if hasattr(self.module, "area_size") else DAX_ALIGN

    def run(self, virt: Libvirt, dom, args: dict, t0: float) -> tuple[dict | None, str, str]:
        r = virt.run(dom, ["python3", PROGRAM, "run", json.dumps(args)],
                     timeout=max(0.0, t0 - time.monotonic()) + args["seconds"] + GRACE)
        result = _parse_result(r.stdout)
        failed = r.exitcode != 0 or result is None
        return result, r.stdout + r.stderr, f"exit {r.exitcode}: {_last_line(r)}" if failed else ""

    def judge(self, ctx: Context, states: dict, checks: dict) -> Verdict:
        return self.module.judge(ctx, states, checks)


class Script:
    """Your --script as a workload: run as it is on every node at the common start (it has no
    setup to wait for), told its part through DALI_* variables. Its exit status is its verdict,
    so a node has nothing to check afterwards and the judge nothing to add."""
    DOC = ("your own executable, run on every node with DALI_NODE, DALI_NODE_INDEX, DALI_NODES, "
           "DALI_TARGET, DALI_SECONDS; its exit status counts")
    NEEDS = ("dir", "block", "dax")
    WHY_NOT: dict[str, str] = {}
    PARAMS: dict = {}
    OWN_DIRECTORY = False  # it works where it likes: DALI_TARGET is the target itself
    CHECKED = False  # its exit status was its verdict: nothing of it is left to check

    def __init__(self, path: Path):
        self.path = path
        self.NAME = path.name

    def area_size(self, nodes: int, params: dict) -> int:
        return 0  # none saved and zeroed: a script on a raw device is the user's own business

    def run(self, virt: Libvirt, dom, args: dict, t0: float) -> tuple[dict | None, str, str]:
        time.sleep(max(0.0, t0 - time.monotonic()))
        started = time.monotonic()
        r = virt.run(dom, [SCRIPT], timeout=args["seconds"] + GRACE, env=self._env(args))
        took = round(time.monotonic() - started, 3)
        ok = r.exitcode == 0
        result = {"ops": 1, "bytes": 0, "elapsed": took, "max_latency": took, "stalls": [],
                  "notes": {}, "state": {}, "violations": {} if ok else {f"exit {r.exitcode}": 1},
                  "examples": [] if ok else [f"{SCRIPT} exited {r.exitcode}"]}
        return result, r.stdout + r.stderr, ""

    @staticmethod
    def _env(args: dict) -> dict[str, str]:
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root", "DALI_NODE": args["name"], "DALI_NODE_INDEX": str(args["index"]),
                "DALI_NODES": str(args["nodes"]), "DALI_TARGET": args["target"],
                "DALI_SECONDS": f"{args['seconds']:g}"}

    def judge(self, ctx: Context, states: dict, checks: dict) -> Verdict:
        return Verdict()


CHECKERS = {name: Checker(module) for name, module in workloads.WORKLOADS.items()}


class Job(NamedTuple):
    """One workload of the run, with its values."""
    name: str
    workload: Workload
    params: dict
    area: tuple[int, int] | None  # the device bytes it works on (raw-device targets)


class Plan(NamedTuple):
    jobs: list[Job]
    not_run: list[tuple[str, str]]  # (workload, why it does not run on this target)
    nodes: list[tuple[Node, libvirt.virDomain]]
    target: str
    kind: str  # "dir", "block" or "dax"
    seconds: float
    faults: list[faults.Fault]
    script: Path | None
    seed: int
    facts: dict = {}  # what it ran on (_facts): the report's properties, the known failures' choice


def describe_workloads() -> str:
    lines = [f"{name:10} {c.DOC}" for name, c in CHECKERS.items()]
    lines.append(f"{'--script':10} {Script.DOC}")
    lines.append("parameters: WORKLOAD:key=value,... e.g. lock:kind=flock; defaults: " + "; ".join(
        f"{name} {', '.join(f'{k}={v}' for k, v in c.PARAMS.items())}" for name, c in CHECKERS.items()))
    return "\n".join(lines)


# --- 1. the plan -----------------------------------------------------------------------------

def _parse_workload(word: str) -> tuple[str, Checker, dict]:
    name, _, rest = word.partition(":")
    checker = CHECKERS.get(name)
    if checker is None:
        raise DaliError(f"no workload '{name}': one of {', '.join(CHECKERS)} "
                        "(doit torture --list), or --script PATH for your own")
    params = dict(checker.PARAMS)
    for pair in filter(None, rest.split(",")):
        key, eq, value = pair.partition("=")
        if not eq or key not in params:
            raise DaliError(f"{word}: {name} takes {', '.join(f'{k}=' for k in params)} "
                            f"(as {name}:{next(iter(params))}=...)")
        if isinstance(params[key], int):
            if not is_digits(value) or int(value) < 1:
                raise DaliError(f"{word}: {key} must be a whole number of at least 1")
            value = int(value)
        elif name == "lock" and value not in checker.module.KINDS:
            raise DaliError(f"{word}: kind is one of {', '.join(checker.module.KINDS)}")
        params[key] = value
    return name, checker, params


def _script(given: str) -> Script:
    path = Path(given)
    if not path.is_file():
        raise DaliError(f"--script {given}: no such file")
    if not os.access(path, os.X_OK):
        raise DaliError(f"--script {given}: not executable: chmod +x {given}")
    # A run's results, outputs and report know a workload by its name: a script named like one
    # of dali's would pass for it, and beside it overwrite its results. Refused, not renamed
    # ("script:append"): that would change every script's rows and files, and put a ':' in
    # nodes/<node>/<workload>.out, a name CI systems' artifact uploads refuse.
    if path.name in CHECKERS:
        raise DaliError(f"--script {given}: named like the workload {path.name}, which the report "
                        f"could not tell it from: rename the script (or run a copy, say my-{path.name})")
    return Script(path)


def _target(cluster: Cluster, target: str) -> tuple[str, str]:
    if target:
        if not target.startswith("/") or any(c.isspace() for c in target) or ".." in target.split("/"):
            raise DaliError(f"--target {target}: give an absolute path on the nodes, without spaces "
                            "or '..'")
        # The path, not the text typed: /data/ and /data/. are fs.mountpoint, whose mount is
        # checked. normpath keeps a leading // (POSIX leaves its meaning open): one slash here.
        target = "/" + posixpath.normpath(target).lstrip("/")
        return target, ("dax" if target.startswith("/dev/dax") else
                        "block" if target.startswith("/dev/") else "dir")
    if cluster.fs.type != "none":
        return cluster.fs.mountpoint, "dir"
    device = guest.device_path(cluster.device_mode)
    return device, "dax" if device.startswith("/dev/dax") else "block"


def plan(cluster: Cluster, files: Storage, virt: Libvirt, names: list[str], on: str, seconds: int, script: str,
         target: str, crash: list[str], partition: list[str], seed: int) -> Plan:
    if seconds < 1:
        raise DaliError(f"--seconds {seconds}: a run lasts at least 1 second")
    if seconds > faults.LONGEST:
        raise DaliError(f"--seconds {seconds}: a run lasts at most {faults.LONGEST} s (a week): give fewer")
    parsed = [_parse_workload(w) for w in names]
    yours = _script(script) if script else None
    where, kind = _target(cluster, target)
    if not parsed and yours is None:  # every workload; those that cannot run here say why
        parsed = [(n, c, dict(c.PARAMS)) for n, c in CHECKERS.items()]
    runs, not_run = [], []
    for name, checker, params in parsed:
        if kind in checker.NEEDS:
            runs.append(Job(name, checker, params, None))
        else:
            not_run.append((name, checker.WHY_NOT.get(kind, f"it does not run on {where}")))
    if len({j.name for j in runs}) != len(runs):
        raise DaliError("a workload is named twice: name each once (parameters after a colon)")
    if yours is not None:
        runs.append(Job(yours.NAME, yours, {}, None))

    nodes, down = running(cluster, files, virt, [n for n in on.split(",") if n])  # a booting node waited for
    if down and on:
        raise DaliError(f"{', '.join(down)} not running: doit start "
                        f"{' '.join(down)} first, or leave it out of --on")
    if not nodes:
        raise DaliError("no node is running: doit start first")

    names_by = {n.name: n.name for n, _ in nodes} | {n.suffix: n.name for n, _ in nodes}

    def resolve(name: str) -> str:
        if name not in names_by:
            raise DaliError(f"{name}: not a running node of this run (one of "
                            f"{', '.join(n.name for n, _ in nodes)}): doit start it, or add it to --on")
        return names_by[name]

    planned = [faults.parse("crash", s, resolve, seconds) for s in crash]
    planned += [faults.parse("partition", s, resolve, seconds) for s in partition]
    faults.check_plan(planned)

    jobs = _with_areas(runs, len(nodes), kind)
    if not jobs:
        raise DaliError(f"no workload runs on {where}: " + "; ".join(f"{n}: {why}" for n, why in not_run))
    return Plan(jobs, not_run, nodes, where, kind, float(seconds), planned,
                yours.path if yours else None, seed or secrets.randbelow(10**6))


def _check_target(cluster: Cluster, files: Storage, virt: Libvirt, p: Plan) -> None:
    """The target is there on every node, and a device holds nothing the run could destroy."""
    test = "-d" if p.kind == "dir" else "-b" if p.kind == "block" else "-c"
    missing = [n.name for (n, _), ok in zip(p.nodes, each(p.nodes, lambda n, d: virt.run(
        d, ["test", test, p.target]).exitcode == 0)) if not ok]
    if missing:
        what = "directory" if p.kind == "dir" else "device"
        raise DaliError(f"{', '.join(missing)}: no {what} {p.target}: " +
                        ("is the filesystem mounted? doit start mounts it" if p.target ==
                         cluster.fs.mountpoint else "check --target and device.mode"))
    if p.kind == "dir" and p.target == cluster.fs.mountpoint:
        unmounted = [n.name for (n, _), ok in zip(p.nodes, each(p.nodes, lambda n, d: virt.run(
            d, ["mountpoint", "-q", p.target]).exitcode == 0)) if not ok]
        if unmounted:
            raise DaliError(f"{', '.join(unmounted)}: {p.target} is not mounted: doit start "
                            f"{' '.join(unmounted)} mounts it")
    if p.kind != "dir" and any(j.area for j in p.jobs):
        if p.target != guest.device_path(cluster.device_mode):
            raise DaliError(f"--target {p.target}: device workloads run on the shared device "
                            f"{guest.device_path(cluster.device_mode)} only")
        refuse_to_write(virt, p.nodes, p.target)
        end = max(a[0] + a[1] for a in (j.area for j in p.jobs) if a)
        size = fam.held(cluster, files)["size"]
        if end > size:
            raise DaliError(f"the workloads need {end} bytes of the device, which has {size}: "
                            "fewer nodes or smaller parameters")


# --- 2.-4. the run ------------------------------------------------------------------------------

def _args(p: Plan, job: Job, index: int, node: Node, run_id: str, start_at: float | None = None) -> dict:
    return {"workload": job.name, "target": p.target, "kind": p.kind, "index": index,
            "nodes": len(p.nodes), "name": node.name, "seconds": p.seconds, "seed": p.seed,
            "run_id": run_id, "params": job.params, "area": job.area, "start_at": start_at,
            "stack": p.facts.get("stack", "")}


def _facts(cluster: Cluster, virt: Libvirt, p: Plan) -> dict:
    """What the run runs on, asked of the nodes now (a kernel under test is what each node
    booted, not what the config says): each node's kernel, the target's filesystem and its
    cluster stack; with the cluster's settings and dali's own version, for run.json, junit.xml
    and the known failures (dali/known_failures.py)."""
    probe = ("uname -r; findmnt -n -o FSTYPE --target \"$1\" 2>/dev/null || echo; "
             "cat /sys/fs/ocfs2/cluster_stack 2>/dev/null || echo")
    def ask(node, dom) -> list[str]:
        try:
            return virt.run(dom, ["sh", "-c", probe, "sh", p.target]).stdout.splitlines()
        except (DaliError, libvirt.libvirtError):
            return []  # said as "?": the run itself says what is wrong with the node
    said = each(p.nodes, ask)
    first = (said[0] + ["", "", ""])[:3] if said else ["", "", ""]
    fs = first[1].strip() if p.kind == "dir" else ""
    types = {n.name: ET.fromstring(d.XMLDesc(0)).get("type") for n, d in p.nodes}
    return {"kernel": {n.name: visible_line((lines or ["?"])[0]) for (n, _), lines in zip(p.nodes, said)},
            "fs": visible_line(fs), "stack": visible_line(first[2].strip()) if fs == "ocfs2" else "",
            "device_mode": cluster.device_mode, "device_style": cluster.device_style,
            "accel": "kvm" if "kvm" in types.values() else "tcg", "coherence": cluster.coherence,
            "seed": p.seed, "dali_commit": _dali_version(), "count": ""}


def _dali_version() -> str:
    """The checkout's commit (with -dirty when it has changes), or "unknown" outside git."""
    try:
        r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def _clock_offsets(virt: Libvirt, nodes) -> dict[str, float]:
    """Each node's clock minus the host's, in seconds, through the agent (a round trip takes
    tens of milliseconds). Under TCG a node's clock is set from the host's at boot and may be
    a second off: the common start is given to each node on its own clock."""
    offsets = {}
    for node, dom in nodes:
        before = time.time()
        guest_ns = virt.agent(dom, "guest-get-time")
        after = time.time()
        offsets[node.name] = guest_ns / 1e9 - (before + after) / 2
    return offsets


def _parse_result(out: str) -> dict | None:
    """The result a workload's run printed last; None if it printed none, or one that is not
    a JSON object (a kernel under test may garble a node's output): that node's run then failed,
    with its output."""
    found = _result_line(out)
    return found if isinstance(found, dict) else None


def _result_line(out: str):
    """The JSON the node's program printed last after RESULT; None if none, or not JSON."""
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT):
            try:
                return json.loads(line[len(RESULT):])
            except ValueError:
                return None
    return None


def _last_line(r: ExecResult) -> str:
    """What a program that failed said last (a traceback's last line says what it was)."""
    return (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]


def _device_span(p: Plan) -> tuple[int, int] | None:
    areas = [j.area for j in p.jobs if j.area]
    if not areas:
        return None
    return 0, max(a[0] + -(-a[1] // DAX_ALIGN) * DAX_ALIGN for a in areas)


def _save_and_zero(cluster: Cluster, files: Storage, p: Plan, run_id: str, span: tuple[int, int]) -> None:
    """Record the bytes the run may overwrite (durably, before any write) and zero them: the
    workloads start from a known state. The nodes map the FAM shared: this is what they see."""
    base = fam.held(cluster, files)["data_offset"]
    old = files.read(cluster.fam_path, base + span[0], span[1])
    # The run's programs carry its id on their command lines (and a script its path): a run that
    # dies before it puts the bytes back has them killed by the next one, which then puts the
    # bytes back (dali/fam.py). They end by themselves at the latest LEAD + --seconds + GRACE
    # (the run) + GRACE (the checks) from now.
    lead = LEAD + LEAD_PER_JOB * len(p.jobs)
    fam.save_before_write(cluster, files, {base + span[0] + at: old[at:at + (1 << 20)]
                                           for at in range(0, len(old), 1 << 20)},
                          until=time.time() + lead + p.seconds + 2 * GRACE, writers=writers(run_id))
    files.write(cluster.fam_path, {base + span[0]: bytes(span[1])})


def writers(run_id: str) -> str:
    """The run's programs on a node, as pkill -f finds them (an extended regular expression
    that does not match the command line of the shell that runs pkill with it)."""
    return f"{PROGRAM.replace('.', '[.]')} .*{run_id}|{SCRIPT[:-1]}[{SCRIPT[-1]}]"


def _put_back(cluster: Cluster, files: Storage, virt: Libvirt) -> None:
    """The bytes saved before the run, back: its programs killed first, where one still runs
    (a node whose run timed out, say), so nothing of the run writes after them."""
    fam.restore_saved(cluster, files, virt)


def _run_one(virt: Libvirt, p: Plan, job: Job, index: int, node: Node, dom, run_id: str,
             t0: float, start_at: float) -> Outcome:
    """One workload on one node. t0: the common start on the host's monotonic clock; start_at:
    the same moment on the node's clock."""
    try:
        args = _args(p, job, index, node, run_id, start_at)
        result, output, failure = job.workload.run(virt, dom, args, t0)
    except (DaliError, libvirt.libvirtError) as e:
        result, output, failure = None, "", one_line(e)
    return Outcome.of(node.name, job.name, result, output, failure)


def _up(virt: Libvirt, dom) -> bool:
    try:
        return virt.is_running(dom) and virt.agent_answers(dom)
    except libvirt.libvirtError:
        return False


def _run_dir(cluster: Cluster) -> tuple[str, Path]:
    base = cluster.state_dir / "runs"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        run_id = stamp if n == 0 else f"{stamp}-{n}"
        try:
            (base / run_id).mkdir(mode=0o700)
            return run_id, base / run_id
        except FileExistsError:
            continue
    raise DaliError(f"{base}: cannot make a run directory")


def torture(cluster: Cluster, files: Storage, virt: Libvirt, workloads_named=(), on: str = "",
            seconds: int | None = None,
            show_list: bool = False, script: str = "", target: str = "", crash=(), partition=(),
            seed: int = 0, compare_disk: bool = False, count: int = 1, from_snapshot: str | None = None) -> None:
    if show_list:
        print(describe_workloads())
        return
    known = known_failures.load(cluster.known_failures)  # a baseline that cannot be read: one line, nothing run
    if count < 1:
        raise DaliError(f"--count {count}: give the number of runs, 1 or more")
    if count > MAX_COUNT:
        raise DaliError(f"--count {count}: at most {MAX_COUNT} runs in one command: give fewer, "
                        "or run it again")
    if from_snapshot:  # every run from the snapshot: the words checked before the first rollback
        for word in workloads_named:
            _parse_workload(word)
        if script:
            _script(script)
        snapshot.converge(cluster, files, virt)  # a rollback a stopped doit began, finished first
        snapshot.rollback(cluster, files, virt, from_snapshot)
    fam.restore_saved(cluster, files, virt)  # what a run killed before it put the device back left behind
    seconds = DEFAULT_SECONDS if seconds is None else seconds
    p = plan(cluster, files, virt, list(workloads_named), on, seconds, script, target, list(crash),
             list(partition), seed)
    if compare_disk and (p.faults or target):
        raise DaliError("--compare-disk runs the same workloads on the NVDIMM, then on the disk: "
                        "without --crash, --partition or --target (a fault's victim would miss the "
                        "second half); run those on their own")
    for name in faults.heal(p.nodes):
        log(f"torture: {name}'s network link was down (a run stopped during a partition); it is up again")
    _check_target(cluster, files, virt, p)
    for name, why in p.not_run:
        log(f"torture: {name} does not run here: {why}")
    p = p._replace(facts=_facts(cluster, virt, p))

    program = workloads.zipapp()

    def ship(node, dom):
        guest.put_file(virt, dom, program, PROGRAM, 0o644)
        if p.script is not None:
            virt.run(dom, ["mkdir", "-p", os.path.dirname(SCRIPT)]).check(f"mkdir {os.path.dirname(SCRIPT)}")
            guest.put_file(virt, dom, p.script.read_bytes(), SCRIPT, 0o755)
    each(p.nodes, ship)
    outcomes = []
    for n in range(count):
        if from_snapshot and n > 0:  # back to the snapshot; what was shipped after it went with it
            snapshot.rollback(cluster, files, virt, from_snapshot)
            p = p._replace(nodes=[(node, virt.domain(node.name)) for node, _ in p.nodes])  # their new qemus
            each(p.nodes, ship)
        # Each run its own directory, work directory and (unless --seed fixed it) seed.
        this = p if n == 0 or seed else p._replace(seed=secrets.randbelow(10**6))
        if count > 1:
            this = this._replace(facts={**this.facts, "seed": this.seed, "count": f"{n + 1}/{count}"})
            log(f"torture: run {n + 1} of {count}")
        outcomes.append(_one_run(cluster, files, virt, this, known, compare_disk))
    if count > 1:
        _series(cluster, outcomes)
    failed = [line for _, lines in outcomes for line in lines]
    if failed:
        raise DaliError(failed[0] if count == 1 else
                        f"{sum(1 for _, lines in outcomes if lines)} of {count} runs failed; the first: {failed[0]}")


class RunOutcome(NamedTuple):
    run_id: str
    reports: list[Report]  # one; two with --compare-disk (NVDIMM, disk)


def _one_run(cluster: Cluster, files: Storage, virt: Libvirt, p: Plan, known,
             compare_disk: bool) -> tuple[RunOutcome, list[str]]:
    """One run (both halves with --compare-disk), reported and kept: (what it was, why it
    failed: one line per reason, none when it passed)."""
    run_id, run_dir = _run_dir(cluster)
    checked = coherence.DuringRun(cluster, files)  # device.coherence: what the plugins find meanwhile
    if not compare_disk:
        report = _one_pass(cluster, files, virt, p, run_id, run_dir, known, save_device=True)
        failed = [report.failure_line()] if report.failed else []
        failed += [line for line in [checked.finish(files, virt, run_dir)] if line]
        return RunOutcome(run_id, [report]), ["; ".join(failed)] if failed else []
    nvdimm = _one_pass(cluster, files, virt, p, run_id, run_dir / "nvdimm", known, save_device=True)
    incoherent = checked.finish(files, virt, run_dir / "nvdimm")
    where, kind = shared_disk.prepare(cluster, files, virt, p.nodes)
    on_disk = _retarget(p, where, kind)
    on_disk = on_disk._replace(facts=_facts(cluster, virt, on_disk))
    for name, why in on_disk.not_run:
        log(f"torture: {name} does not run on the shared disk: {why}")
    disk = _one_pass(cluster, files, virt, on_disk, run_id, run_dir / "disk", known, save_device=False)
    side_by_side = Report.side_by_side(nvdimm, disk)
    (run_dir / "compare.md").write_text(side_by_side + "\n")
    (run_dir / "report.html").write_text(report_page.compare_disk_page(nvdimm.as_json(), disk.as_json()))
    print(side_by_side)
    print(f"kept in {run_dir}; to look at: {run_dir / 'report.html'}")
    failed = [f"{what}: {r.failure_line()}" for what, r in (("NVDIMM", nvdimm), ("disk", disk)) if r.failed]
    failed += [f"NVDIMM: {incoherent}"] if incoherent else []
    return RunOutcome(run_id, [nvdimm, disk]), ["; ".join(failed)] if failed else []


def _series(cluster: Cluster, outcomes: list[tuple[RunOutcome, list[str]]]) -> None:
    """--count N: per workload, how many runs failed (and the first), how many showed only
    expected failures; printed and kept as series-<first run>.md beside the runs."""
    stats: dict[str, dict] = {}
    for run, _ in outcomes:
        for report in run.reports:
            for t in report.summary:
                s = stats.setdefault(t["workload"], {"runs": 0, "failed": 0, "expected": 0, "first": "-"})
                s["runs"] += 1
                if t["verdict"] == "FAILED":
                    s["failed"] += 1
                    s["first"] = s["first"] if s["first"] != "-" else run.run_id
                s["expected"] += t["verdict"] == "expected"
    first, last = outcomes[0][0].run_id, outcomes[-1][0].run_id
    rows = [["workload", "failed", "expected", "first failing run"]]
    rows += [[w, f"{s['failed']}/{s['runs']}", f"{s['expected']}/{s['runs']}", s["first"]]
             for w, s in stats.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    failing = [run.run_id for run, lines in outcomes if lines]
    text = [f"{len(outcomes)} runs, {first} to {last}: {len(failing)} failed"] + table
    if failing:
        text.append(f"failing runs kept (evidence and all): {', '.join(failing)}")
    (cluster.state_dir / "runs" / f"series-{first}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


def _with_areas(jobs: list[Job], nodes: int, kind: str) -> list[Job]:
    """On a device, each workload's own bytes of it, one after the other, each starting on a
    2 MiB boundary (device-dax maps no less); none on a filesystem, nor for a script."""
    placed, offset = [], 0
    for job in jobs:
        size = job.workload.area_size(nodes, job.params) if kind != "dir" else 0
        area = None
        if size:
            area, offset = (offset, size), offset + -(-size // DAX_ALIGN) * DAX_ALIGN
        placed.append(job._replace(area=area))
    return placed


def _retarget(p: Plan, where: str, kind: str) -> Plan:
    """The same run against another device (the shared disk): the jobs that run there."""
    runs = [j for j in p.jobs if kind in j.workload.NEEDS]
    not_run = [(j.name, j.workload.WHY_NOT.get(kind, f"not on {where}")) for j in p.jobs if j not in runs]
    return p._replace(jobs=_with_areas(runs, len(p.nodes), kind), not_run=not_run, target=where, kind=kind)


def _one_pass(cluster: Cluster, files: Storage, virt: Libvirt, p: Plan, run_id: str, run_dir: Path,
              known, save_device: bool) -> Report:
    """The jobs on every node against one device, judged, reported and kept in run_dir."""
    run_dir.mkdir(mode=0o700, exist_ok=True)
    report = Report(cluster, files, virt, p, run_id, run_dir, known)
    windows = {n.name: consoles.mark(files, n.name) for n in cluster.nodes}  # every node's console
    span = _device_span(p) if save_device and p.kind != "dir" else None
    if span:
        _save_and_zero(cluster, files, p, run_id, span)
    try:
        results = _execute(virt, p, run_id, report)
    finally:
        if span:
            _put_back(cluster, files, virt)
    report.finish(results, windows)
    first_up = next((d for n, d in p.nodes if n.name in results.survivors), None)
    if p.kind == "dir" and first_up is not None:
        _tidy(virt, p, run_id, first_up, report)
    report.write_and_print()
    return report


def _execute(virt: Libvirt, p: Plan, run_id: str, report: Report) -> Results:
    """Every job on every node at once, the faults on time; then the checks and the judges."""
    injector = faults.Injector(p.faults, {n.name: d for n, d in p.nodes})
    log(f"torture: {', '.join(j.name for j in p.jobs)} on {', '.join(n.name for n, _ in p.nodes)} "
        f"for {p.seconds:g} s against {p.target}" + "".join(f"; {f.describe()}" for f in p.faults))
    offsets = _clock_offsets(virt, p.nodes)
    lead = LEAD + LEAD_PER_JOB * len(p.jobs)
    t0, start_at = time.monotonic() + lead, time.time() + lead
    injector.start(t0)
    pairs = [((job, i, node), dom) for job in p.jobs for i, (node, dom) in enumerate(p.nodes)]
    results = each(pairs, lambda key, dom: _run_one(virt, p, key[0], key[1], key[2], dom, run_id, t0,
                                                    start_at + offsets[key[2].name]))
    runs = {(job.name, node.name): r for ((job, _, node), _), r in zip(pairs, results)}
    injector.finish()
    log(f"torture: the runs ended after {time.monotonic() - t0:.0f} s; checking what every node sees")

    survivors = [(i, n, d) for i, (n, d) in enumerate(p.nodes) if _up(virt, d)]
    checked, check_errors = _check_all(virt, p, run_id, survivors)
    verdicts = {}
    for job in p.jobs:
        checks = {node.name: checked[(job.name, node.name)] for _, node, _ in survivors}
        states = {n.name: (runs[(job.name, n.name)].result or {}).get("state") for n, _ in p.nodes}
        ctx = Context(_args(p, job, 0, p.nodes[0][0], run_id))
        verdicts[job.name] = job.workload.judge(ctx, states, checks)
    return Results(runs, verdicts, check_errors, [n.name for _, n, _ in survivors], injector.happened,
                   injector.errors, time.monotonic() - t0)


def _check_all(virt: Libvirt, p: Plan, run_id: str, survivors) -> tuple[dict, dict]:
    """What every node still up sees of every job: ({(job, node): what, None if it could not
    say}, {(job, node): why it could not say}); a job not CHECKED (your script) sees {}.
    Each node checks every checked job in one python3 (_check_node), the nodes all at once:
    a python3 start is half a second to a second of a node's CPU under TCG, and one per job and
    node started jobs x nodes of them (the default run on four nodes: twenty) where one per node
    does."""
    checked_jobs = [job for job in p.jobs if job.workload.CHECKED]
    checking = time.monotonic()
    answers = each([((i, node), dom) for i, node, dom in survivors], lambda key, dom: _check_node(
        virt, dom, [_args(p, job, key[0], key[1], run_id) for job in checked_jobs]))
    by_node = {node.name: dict(zip((j.name for j in checked_jobs), said))
               for (_, node, _), said in zip(survivors, answers)}
    checked, errors = {}, {}
    for job in p.jobs:  # in run order, as the report lists them
        for _, node, _ in survivors:
            what = by_node[node.name].get(job.name, {})  # {}: not checked
            checked[(job.name, node.name)] = what if isinstance(what, dict) else None
            if isinstance(what, str):
                errors[(job.name, node.name)] = what
    log(f"torture: checked in {time.monotonic() - checking:.0f} s")
    return checked, errors


def _check_node(virt: Libvirt, dom, args: list[dict]) -> list[dict | str]:
    """One node's checks of the jobs whose args are given, in one python3 (`check-all`), one
    after the other: for each job in order, what the node sees (a dict) or the one line why it
    cannot say. One check that fails fails its job alone, said as when each check was a python3
    of its own: "NODE: checking WORKLOAD failed: " and the last line of its traceback. A python3
    that fails as a whole (the agent gone, killed, no result) fails every check of the node
    with its reason.

    One timeout for them all, GRACE, as each check had when they ran side by side: the node has
    one vCPU, so in turn they end no later than together did, and a filesystem that stalls
    (OCFS2's recovery) stalls every check of the node at once either way. The run's end stays
    within the time _save_and_zero gives its programs."""
    if not args:
        return []

    def failed(job: dict, why: str) -> str:
        return f"{job['name']}: checking {job['workload']} failed: {visible_line(why)}"
    try:
        r = virt.run(dom, ["python3", PROGRAM, "check-all", json.dumps(args)], timeout=GRACE)
    except (DaliError, libvirt.libvirtError) as e:
        return [one_line(e)] * len(args)
    said = _result_line(r.stdout)
    well_formed = (r.exitcode == 0 and isinstance(said, list) and len(said) == len(args) and all(
        isinstance(a, dict) and (isinstance(a.get("result"), dict) or isinstance(a.get("error"), str))
        for a in said))
    if not well_formed:
        return [failed(job, _last_line(r)) for job in args]
    return [a["result"] if isinstance(a.get("result"), dict) else failed(job, a["error"])
            for job, a in zip(args, said)]


def _tidy(virt: Libvirt, p: Plan, run_id: str, dom, report: Report) -> None:
    """On a filesystem, a run that passed leaves nothing; a workload that failed (a violation
    nothing expected, or a node that failed) leaves its directory for a look. Expected
    failures leave nothing: they are known, and every run would pile up their files."""
    own = [j for j in p.jobs if j.workload.OWN_DIRECTORY]
    failed = {t["workload"] for t in report.summary if t["verdict"] == "FAILED"}
    kept = [j.name for j in own if j.name in failed]
    workdir = f"{p.target}/.dali-torture-{run_id}"
    if kept:
        virt.run(dom, ["sh", "-c", " ; ".join(
            f"rm -rf {shlex.quote(workdir + '/' + j.name)}" for j in own if j.name not in kept)])
        report.kept_workdir = f"{workdir} ({', '.join(kept)}: kept for a look, it failed)"
    else:
        virt.run(dom, ["rm", "-rf", workdir], timeout=GRACE)
