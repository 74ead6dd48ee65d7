"""`doit coherence`: what the checked nodes' plugins found since they booted, named and kept.

Writes coherence.md and coherence.xml (JUnit) into a directory (state/<tag>/coherence/ for the
command, the run's directory for a torture run) and prints the same table. --reset zeroes the
findings so that counting starts again (the lines' states stay: they are what the caches hold).
"""

from __future__ import annotations

from pathlib import Path

from dali.cluster import Cluster
from dali.coherence import findings, model
from dali.errors import DaliError
from dali.reporter import log
from dali.storage import Storage
from dali.virt import Libvirt


def report_dir(cluster: Cluster) -> Path:
    return cluster.state_dir / "coherence"


def check_on(cluster: Cluster, files: Storage) -> Path:
    """The cluster's model, or one line saying why there is none to read."""
    path = cluster.coherence_model
    if cluster.coherence == "off":
        raise DaliError("device.coherence is off for this cluster: set device.coherence = \"strict\" "
                        "(or \"cached\") in its config, then doit and doit restart")
    if not files.have(path) or model.read_header(path) is None:
        raise DaliError(f"{path} does not exist yet: run doit (it makes the model), then doit start")
    return path


def gather(cluster: Cluster, files: Storage, virt: Libvirt, binaries: list[Path]) -> tuple[list, list, str]:
    """(named findings, per-node counters, mode) as the model holds them now."""
    path = check_on(cluster, files)
    head = model.read_header(path)
    found = model.findings(path)
    symbols = findings.Symbols(binaries)
    from dali.lifecycle import running  # not at import: every doit loads this module's task
    up = {n.name: d for n, d in running(cluster, files, virt, wait=False)[0]}
    for name in sorted(findings.kernel_nodes(cluster, found)):
        if name in up:
            result = virt.run(up[name], findings.KALLSYMS, timeout=120)
            symbols.add_kernel(name, result.stdout)
    return findings.named(cluster, found, symbols), model.counters(path), head.mode


def write(cluster: Cluster, directory: Path, named: list, mode: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "coherence.md").write_text(findings.markdown(named, cluster, mode))
    (directory / "coherence.xml").write_text(findings.junit(named, mode))


def show(cluster: Cluster, files: Storage, virt: Libvirt, reset: bool = False,
         binaries: list[str] = ()) -> None:
    paths = [Path(b).resolve() for b in binaries]
    for p in paths:
        if not p.is_file():
            raise DaliError(f"--binary {p}: no such file (give the program the nodes ran, built -no-pie)")
    if reset:
        path = check_on(cluster, files)
        model.reset_findings(path)
        log(f"coherence: findings of {path} zeroed; counting again from now")
        return
    named, counters, mode = gather(cluster, files, virt, paths)
    directory = report_dir(cluster)
    write(cluster, directory, named, mode)
    print(findings.text(named, counters, cluster, mode), end="")
    print(f"kept in {directory / 'coherence.md'} and {directory / 'coherence.xml'} (JUnit)")


class DuringRun:
    """A torture run's findings: those the model gained while it ran (what was there before
    stays, for doit coherence), kept in the run's directory beside its report. In strict mode
    any finding fails the run: strict is for code that must be right on non-coherent memory."""

    def __init__(self, cluster: Cluster, files: Storage):
        self.cluster = cluster
        self.path = check_on(cluster, files) if cluster.coherence != "off" else None
        self.before = {self._key(f): f.count for f in model.findings(self.path)} if self.path else {}

    @staticmethod
    def _key(f: model.Finding) -> tuple:
        return f.kind, f.writer_node, f.reader_node, f.writer_pc, f.reader_pc

    def finish(self, files: Storage, virt: Libvirt, run_dir: Path) -> str | None:
        """Writes coherence.md and coherence.xml into run_dir, prints the table; the run's
        failure line in strict mode when anything was found, else None."""
        if self.path is None:
            return None
        named, counters, mode = gather(self.cluster, files, virt, [])
        new = []
        for n in named:
            gained = n.finding.count - self.before.get(self._key(n.finding), 0)
            if gained > 0:
                new.append(n._replace(finding=n.finding._replace(count=gained)))
        write(self.cluster, run_dir, new, mode)
        print(findings.text(new, counters, self.cluster, mode), end="")
        if new and mode == "strict":
            total = sum(n.finding.count for n in new)
            return (f"coherence: {len(new)} finding(s), {total} in all, on non-coherent memory "
                    f"(strict mode): {run_dir / 'coherence.md'}")
        return None
