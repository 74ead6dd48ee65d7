"""What the nodes' plugins found, as a developer reads it: each finding with the code on both
sides named (the kernel's symbols as each node loaded them, a program's through addr2line),
the FAM offset, how often; as text, markdown (coherence.md) and JUnit (coherence.xml).

A kernel address is named from that node's /proc/kallsyms, read through the guest agent (each
node has its own KASLR offset, and modules such as ocfs2 load where they may); a program's from
the binaries given with --binary (built -no-pie, its addresses are the ones the guest ran)."""

from __future__ import annotations

import bisect
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

from dali.cluster import Cluster
from dali.coherence import model
from dali.coherence.model import Finding
from dali.text import visible_line, xml_safe

KERNEL_START = 0xFFFF800000000000  # x86-64: addresses from here up are the kernel's

# Read in the guest: the text symbols of the running kernel and its modules. Only root sees
# their addresses (the agent runs as root).
KALLSYMS = ["/bin/sh", "-c", "grep -i ' t ' /proc/kallsyms"]


class Side(NamedTuple):
    node: str
    pc: int
    name: str  # function+offset [module], or the program's function, or "" where unknown

    def said(self) -> str:
        where = f"{self.pc:#x}"
        return f"{self.node} {self.name} ({where})" if self.name else f"{self.node} {where}"


class Named(NamedTuple):
    finding: Finding
    writer: Side
    reader: Side


class Symbols:
    """Names for addresses: a node's kernel symbols, and user programs' through addr2line."""

    def __init__(self, binaries: list[Path]):
        self.binaries = binaries
        self.kernels: dict[str, tuple[list[int], list[str]]] = {}

    def add_kernel(self, node: str, kallsyms: str) -> None:
        entries = []
        for line in kallsyms.splitlines():
            parts = line.split()
            if len(parts) >= 3:
                try:
                    entries.append((int(parts[0], 16), parts[2] + (f" {parts[3]}" if len(parts) > 3 else "")))
                except ValueError:
                    continue
        entries.sort()
        self.kernels[node] = ([a for a, _ in entries], [n for _, n in entries])

    def name(self, node: str, pc: int) -> str:
        if pc >= KERNEL_START:
            return self._kernel(node, pc)
        return self._program(pc) if pc else ""

    def _kernel(self, node: str, pc: int) -> str:
        if node not in self.kernels:
            return ""
        addresses, names = self.kernels[node]
        i = bisect.bisect_right(addresses, pc) - 1
        if i < 0 or addresses[i] == 0:
            return ""
        name, _, module = names[i].partition(" ")
        return f"{name}+{pc - addresses[i]:#x}" + (f" {module}" if module else "")

    def _program(self, pc: int) -> str:
        for binary in self.binaries:
            try:
                out = subprocess.run(["addr2line", "-f", "-i", "-e", str(binary), f"{pc:#x}"],
                                     capture_output=True, text=True, timeout=30).stdout.splitlines()
            except (OSError, subprocess.TimeoutExpired):
                continue
            # -i: the function the code was inlined from, then each caller it was inlined into:
            # "flush_line in writer_flush" says both where the instruction is and whose it is.
            functions = [f for f in out[0::2] if f and f != "??"]
            if functions:
                said = functions[0] if len(functions) == 1 else f"{functions[0]} in {functions[-1]}"
                return f"{said} ({binary.name})"
        return ""


def node_names(cluster: Cluster) -> list[str]:
    """The model numbers nodes as the domain template does: the original 0, clones in order."""
    return [n.name for n in cluster.nodes]


def named(cluster: Cluster, found: list[Finding], symbols: Symbols) -> list[Named]:
    names = node_names(cluster)

    def side(node: int, pc: int) -> Side:
        who = names[node] if node < len(names) else f"node {node}"
        return Side(who, pc, symbols.name(who, pc))
    return [Named(f, side(f.writer_node, f.writer_pc), side(f.reader_node, f.reader_pc)) for f in found]


def kernel_nodes(cluster: Cluster, found: list[Finding]) -> set[str]:
    """The nodes whose kernel symbols the findings need."""
    names = node_names(cluster)
    wanted = set()
    for f in found:
        for node, pc in ((f.writer_node, f.writer_pc), (f.reader_node, f.reader_pc)):
            if pc >= KERNEL_START and node < len(names):
                wanted.add(names[node])
    return wanted


def _row(n: Named) -> list[str]:
    f = n.finding
    return [f.kind, str(f.count), n.writer.said(), n.reader.said(), f"{f.first_offset:#x}"]


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]


HEADER = ["finding", "count", "writer (node, code)", "reader (node, code)", "FAM offset"]


def text(found: list[Named], counters: list[dict], cluster: Cluster, mode: str) -> str:
    names = node_names(cluster)
    lines = [f"coherence ({mode} mode): {len(found)} distinct finding(s), "
             f"{sum(n.finding.count for n in found)} in all"]
    if found:
        lines += [visible_line(line) for line in _table([_row(n) for n in found], HEADER)]
        lines.append("")
        for kind in dict.fromkeys(n.finding.kind for n in found):
            lines.append(f"{kind}: {model.MEANING[kind]}")
    lines.append("")
    lines.append("seen by each node's plugin since the model was made:")
    rows = [[names[i], *(str(c[k]) for k in ("boots", "loads", "stores", "nt_stores", "flushes", "fences"))]
            for i, c in enumerate(counters[:len(names)])]
    lines += _table(rows, ["node", "boots", "loads", "stores", "nt stores", "flushes", "fences"])
    stale = sum(c["pages_stale"] for c in counters[:len(names)])
    if stale:  # the plugin's own check of its page memory failed (c/plugin.c): say so, loudly
        lines += ["", f"WARNING: {stale} of the plugin's remembered pages were wrong when asked again "
                      f"(of {sum(c['pages_rechecked'] for c in counters[:len(names)])}): some accesses "
                      "were checked at the wrong line or not at all; please report it with the nodes' "
                      "kernel version (docs/coherence.md, Which accesses)"]
    return "\n".join(lines) + "\n"


def markdown(found: list[Named], cluster: Cluster, mode: str) -> str:
    out = [f"# Coherence findings: cluster {cluster.tag}, {mode} mode", ""]
    if not found:
        return "\n".join(out + ["No finding: every read saw what the FAM held, every write reached it.", ""])
    out += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for n in found:
        out.append("| " + " | ".join(visible_line(c).replace("|", "\\|") for c in _row(n)) + " |")
    out.append("")
    for kind in dict.fromkeys(n.finding.kind for n in found):
        out.append(f"- **{kind}**: {model.MEANING[kind]}")
    return "\n".join(out) + "\n"


def junit(found: list[Named], mode: str) -> str:
    """One testcase per finding, failed; one passing testcase when there is none (so a CI
    system shows the check ran)."""
    suite = ET.Element("testsuite", name="coherence", tests=str(max(1, len(found))),
                       failures=str(len(found)))
    ET.SubElement(suite, "properties").append(ET.Element("property", name="mode", value=mode))
    if not found:
        ET.SubElement(suite, "testcase", classname="coherence", name="no finding")
    for n in found:
        f = n.finding
        case = ET.SubElement(suite, "testcase", classname=xml_safe(f"coherence.{f.kind.replace(' ', '_')}"),
                             name=xml_safe(f"{n.writer.said()} -> {n.reader.said()}"))
        failure = ET.SubElement(case, "failure", message=xml_safe(f"{f.kind} x{f.count} at FAM offset {f.first_offset:#x}"))
        failure.text = xml_safe(model.MEANING[f.kind])
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
