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
4. Every node still up checks what it sees; each workload's judge compares that with what the
   runs did. The consoles are scanned for panics, oopses and hangs (dali/consoles.py).
5. The report (dali/torture_report.py) is printed and kept under state/<tag>/runs/<time>/.
   The run fails (exit 1) on any violation or any node that failed.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from pathlib import Path
from typing import NamedTuple

import libvirt

from dali import consoles, fam, faults, guest, shared_disk, workloads
from dali.cluster import Cluster, Node
from dali.errors import DaliError, one_line
from dali.fanout import each
from dali.lifecycle import running
from dali.reporter import log
from dali.storage import Storage
from dali.torture_report import Report
from dali.verify import refuse_to_write
from dali.virt import Libvirt
from dali.workloads.guest import RESULT

DEFAULT_SECONDS = 30
PROGRAM = "/run/dali-torture.pyz"  # on each node: the workloads; /run is a tmpfs, gone at reboot
SCRIPT = "/var/lib/dali-torture/script"  # not in /run: Debian mounts it noexec
DAX_ALIGN = 2 << 20  # device-dax maps whole 2 MiB pages: every area starts on one
GRACE = 600  # seconds a node may take beyond --seconds: an OCFS2 recovery stalls for a minute
# Every node begins at the same moment, after its setup (starting python, the first mkdir on the
# filesystem, each workload a python of its own): that long after the launch. A node that is not ready by then begins late, and
# says by how much (the report's "late"); faults are timed from the common start.
LEAD, LEAD_PER_JOB = 4.0, 3.0  # measured: 4 workloads on 3 one-vCPU nodes under TCG were ready after 8-12 s


class Job(NamedTuple):
    """One workload of the run: a module of dali/workloads (None for --script) and its values."""
    name: str
    module: object | None
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


def describe_workloads() -> str:
    lines = [f"{name:10} {m.DOC}" for name, m in workloads.WORKLOADS.items()]
    lines.append(f"{'--script':10} your own executable, run on every node with DALI_NODE, "
                 "DALI_NODE_INDEX, DALI_NODES, DALI_TARGET, DALI_SECONDS; its exit status counts")
    lines.append("parameters: WORKLOAD:key=value,... e.g. lock:kind=flock; defaults: " + "; ".join(
        f"{name} {', '.join(f'{k}={v}' for k, v in m.PARAMS.items())}"
        for name, m in workloads.WORKLOADS.items()))
    return "\n".join(lines)


# --- 1. the plan -----------------------------------------------------------------------------

def _parse_workload(word: str) -> tuple[str, object, dict]:
    name, _, rest = word.partition(":")
    module = workloads.WORKLOADS.get(name)
    if module is None:
        raise DaliError(f"no workload '{name}': one of {', '.join(workloads.WORKLOADS)} "
                        "(doit torture --list), or --script PATH for your own")
    params = dict(module.PARAMS)
    for pair in filter(None, rest.split(",")):
        key, eq, value = pair.partition("=")
        if not eq or key not in params:
            raise DaliError(f"{word}: {name} takes {', '.join(f'{k}=' for k in params)} "
                            f"(as {name}:{next(iter(params))}=...)")
        if isinstance(params[key], int):
            if not value.isdigit() or int(value) < 1:
                raise DaliError(f"{word}: {key} must be a whole number of at least 1")
            value = int(value)
        elif name == "lock" and value not in module.KINDS:
            raise DaliError(f"{word}: kind is one of {', '.join(module.KINDS)}")
        params[key] = value
    return name, module, params


def _target(cluster: Cluster, target: str) -> tuple[str, str]:
    if target:
        if not target.startswith("/") or any(c.isspace() for c in target):
            raise DaliError(f"--target {target}: give an absolute path on the nodes, without spaces")
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
    parsed = [_parse_workload(w) for w in names]
    script_path = None
    if script:
        script_path = Path(script)
        if not script_path.is_file():
            raise DaliError(f"--script {script}: no such file")
        if not os.access(script_path, os.X_OK):
            raise DaliError(f"--script {script}: not executable: chmod +x {script}")
    where, kind = _target(cluster, target)
    if not parsed and script_path is None:  # every workload; those that cannot run here say why
        parsed = [(n, m, dict(m.PARAMS)) for n, m in workloads.WORKLOADS.items()]
    runs, not_run = [], []
    for name, module, params in parsed:
        if kind in module.NEEDS:
            runs.append((name, module, params))
        else:
            not_run.append((name, getattr(module, "WHY_NOT", {}).get(kind, f"it does not run on {where}")))
    if len({n for n, _, _ in runs}) != len(runs):
        raise DaliError("a workload is named twice: name each once (parameters after a colon)")

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

    jobs = _with_areas([Job(name, module, params, None) for name, module, params in runs],
                       len(nodes), kind)
    if script_path is not None:
        jobs.append(Job(script_path.name, None, {}, None))
    if not jobs:
        raise DaliError(f"no workload runs on {where}: " + "; ".join(f"{n}: {why}" for n, why in not_run))
    return Plan(jobs, not_run, nodes, where, kind, float(seconds), planned, script_path,
                seed or secrets.randbelow(10**6))


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
            "run_id": run_id, "params": job.params, "area": job.area, "start_at": start_at}


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
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    return None


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
             t0: float, start_at: float) -> dict:
    """One workload on one node; what it returned, as the report wants it. t0: the common
    start on the host's monotonic clock; start_at: the same moment on the node's clock."""
    out = {"node": node.name, "workload": job.name, "started": 0.0, "result": None}
    try:
        if job.module is None:
            time.sleep(max(0.0, t0 - time.monotonic()))  # a script has no setup: started at t0
            started = time.monotonic() - t0
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "HOME": "/root", "DALI_NODE": node.name, "DALI_NODE_INDEX": str(index),
                   "DALI_NODES": str(len(p.nodes)), "DALI_TARGET": p.target,
                   "DALI_SECONDS": f"{p.seconds:g}"}
            r = virt.run(dom, [SCRIPT], timeout=p.seconds + GRACE, env=env)
            out["output"] = r.stdout + r.stderr
            took = time.monotonic() - t0 - started
            out["result"] = {"ops": 1, "bytes": 0, "elapsed": round(took, 3), "max_latency": round(took, 3),
                             "stalls": [], "notes": {}, "state": {},
                             "violations": {} if r.exitcode == 0 else {f"exit {r.exitcode}": 1},
                             "examples": [] if r.exitcode == 0 else [f"{SCRIPT} exited {r.exitcode}"]}
            out["status"] = "ok" if r.exitcode == 0 else "violations"
            return out
        r = virt.run(dom, ["python3", PROGRAM, "run",
                           json.dumps(_args(p, job, index, node, run_id, start_at))],
                     timeout=max(0.0, t0 - time.monotonic()) + p.seconds + GRACE)
        out["output"] = r.stdout + r.stderr
        out["result"] = _parse_result(r.stdout)
        if out["result"]:
            out["started"] = out["result"].get("late", 0.0)
        if r.exitcode != 0 or out["result"] is None:
            last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]
            out["status"] = f"failed: exit {r.exitcode}: {last}"
            out["result"] = None
        else:
            out["status"] = "violations" if out["result"]["violations"] else "ok"
    except (DaliError, libvirt.libvirtError) as e:
        out["status"] = f"failed: {one_line(e)}"
        out.setdefault("output", "")
    return out


def _check_one(virt: Libvirt, p: Plan, job: Job, index: int, node: Node, dom, run_id: str) -> dict | None:
    r = virt.run(dom, ["python3", PROGRAM, "check", json.dumps(_args(p, job, index, node, run_id))],
                 timeout=GRACE)
    result = _parse_result(r.stdout)
    if r.exitcode != 0 or result is None:
        last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]
        raise DaliError(f"{node.name}: checking {job.name} failed: {last}")
    return result


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
            seed: int = 0, compare_disk: bool = False) -> None:
    if show_list:
        print(describe_workloads())
        return
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

    run_id, run_dir = _run_dir(cluster)
    program = workloads.zipapp()

    def ship(node, dom):
        guest.put_file(virt, dom, program, PROGRAM, 0o644)
        if p.script is not None:
            virt.run(dom, ["mkdir", "-p", os.path.dirname(SCRIPT)]).check(f"mkdir {os.path.dirname(SCRIPT)}")
            guest.put_file(virt, dom, p.script.read_bytes(), SCRIPT, 0o755)
    each(p.nodes, ship)
    if not compare_disk:
        report = _one_pass(cluster, files, virt, p, run_id, run_dir, save_device=True)
        if report.failed:
            raise DaliError(report.failure_line())
        return
    nvdimm = _one_pass(cluster, files, virt, p, run_id, run_dir / "nvdimm", save_device=True)
    where, kind = shared_disk.prepare(cluster, files, virt, p.nodes)
    on_disk = _retarget(p, where, kind)
    for name, why in on_disk.not_run:
        log(f"torture: {name} does not run on the shared disk: {why}")
    disk = _one_pass(cluster, files, virt, on_disk, run_id, run_dir / "disk", save_device=False)
    side_by_side = Report.side_by_side(nvdimm, disk)
    (run_dir / "compare.md").write_text(side_by_side + "\n")
    print(side_by_side)
    failed = [f"{what}: {r.failure_line()}" for what, r in (("NVDIMM", nvdimm), ("disk", disk)) if r.failed]
    if failed:
        raise DaliError("; ".join(failed))


def _with_areas(jobs: list[Job], nodes: int, kind: str) -> list[Job]:
    """On a device, each workload's own bytes of it, one after the other, each starting on a
    2 MiB boundary (device-dax maps no less); none on a filesystem, nor for a script."""
    placed, offset = [], 0
    for job in jobs:
        area = None
        if job.module is not None and kind != "dir":
            size = (job.module.area_size(nodes, job.params) if hasattr(job.module, "area_size")
                    else DAX_ALIGN)
            area, offset = (offset, size), offset + -(-size // DAX_ALIGN) * DAX_ALIGN
        placed.append(job._replace(area=area))
    return placed


def _retarget(p: Plan, where: str, kind: str) -> Plan:
    """The same run against another device (the shared disk): the jobs that run there."""
    runs = [j for j in p.jobs if j.module is None or kind in j.module.NEEDS]
    not_run = [(j.name, getattr(j.module, "WHY_NOT", {}).get(kind, f"not on {where}"))
               for j in p.jobs if j not in runs]
    return p._replace(jobs=_with_areas(runs, len(p.nodes), kind), not_run=not_run, target=where, kind=kind)


def _one_pass(cluster: Cluster, files: Storage, virt: Libvirt, p: Plan, run_id: str, run_dir: Path,
              save_device: bool) -> Report:
    """The jobs on every node against one device, judged, reported and kept in run_dir."""
    run_dir.mkdir(mode=0o700, exist_ok=True)
    report = Report(cluster, files, virt, p, run_id, run_dir)
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
    report.write_and_print()
    return report


def _execute(virt: Libvirt, p: Plan, run_id: str, report: Report) -> dict:
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
    verdicts, check_errors = {}, {}
    judged = [job for job in p.jobs if job.module is not None]

    def check(job, i, node, dom):
        try:
            return _check_one(virt, p, job, i, node, dom, run_id)
        except (DaliError, libvirt.libvirtError) as e:
            check_errors[(job.name, node.name)] = one_line(e)
            return None
    # Every check at once, as the runs were: each starts python3 on a node, seconds of TCG
    # time, and one after the other a run waited for jobs x nodes of them.
    checking = time.monotonic()
    pairs = [((job, i, node), dom) for job in judged for i, node, dom in survivors]
    results = each(pairs, lambda key, dom: check(key[0], key[1], key[2], dom))
    checked = {(job.name, node.name): r for ((job, _, node), _), r in zip(pairs, results)}
    check_errors = {key: check_errors[key] for key in checked if key in check_errors}  # in run order
    log(f"torture: checked in {time.monotonic() - checking:.0f} s")
    for job in judged:
        checks = {node.name: checked[(job.name, node.name)] for _, node, _ in survivors}
        states = {n.name: (runs[(job.name, n.name)]["result"] or {}).get("state")
                  for n, _ in p.nodes}
        ctx = workloads.common.Context({**_args(p, job, 0, p.nodes[0][0], run_id)})
        verdicts[job.name] = job.module.judge(ctx, states, checks)
    clean = p.kind == "dir" and survivors
    if clean:
        victims = {f.node for f in p.faults}
        kept = [j.name for j in p.jobs if j.module and (verdicts[j.name].by_node or any(
            runs[(j.name, n.name)]["status"] != "ok" for n, _ in p.nodes if n.name not in victims))]
        _, node, dom = survivors[0]
        workdir = f"{p.target}/.dali-torture-{run_id}"
        if kept:
            virt.run(dom, ["sh", "-c", " ; ".join(
                f"rm -rf {shlex.quote(workdir + '/' + j.name)}" for j in p.jobs
                if j.module and j.name not in kept)])
            report.kept_workdir = f"{workdir} ({', '.join(kept)}: kept for a look, it showed violations)"
        else:
            virt.run(dom, ["rm", "-rf", workdir], timeout=GRACE)
    return {"runs": runs, "verdicts": verdicts, "check_errors": check_errors,
            "survivors": [n.name for _, n, _ in survivors], "faults": injector.happened,
            "fault_errors": injector.errors, "elapsed": time.monotonic() - t0}
