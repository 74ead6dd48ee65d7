"""The verbs that take free words, `doit torture`, `doit pssh`, `doit pput`, `doit dump`, `doit
snapshot` and `doit rollback` (and their listings, `doit runs`, `doit snapshots`): each a doit
command of its own, with one parser.

doit reads a task's options only before its positional words, and takes every word with a '='
in it (rc=$?, FOO=bar, lock:kind=flock) for one of its command-line variables, leaving it out
of the task's words. So each of these verbs is a doit command (a plugin registered in
pyproject.toml, as `clean` is) that
- takes the words typed after its name, as typed (typed_after): a word with a '=' is the verb's,
  but a config=PATH at the end still names the cluster file, as one before the verb's name does
  (dodo.py reads doit's variable `config`);
- refuses a config=PATH as the first of them, which would be the verb's (pssh's command) where
  it reads as the cluster file: in one line, nothing run;
- parses them with the verb's parser, declared once below: options anywhere among torture's
  workloads, pput's paths and dump's nodes, before pssh's command (which has options of its
  own), `--` ending them. A mistake is one line and exit 2, before dodo.py is loaded; -h or
  --help prints the usage, as `doit help VERB` does;
- runs the verb's task as `doit run` would (the cluster's lock, the progress and one-line
  failures of dali/reporter.py, Ctrl-C, the task's dependencies), handing it what it parsed
  through doit's task options (loader.task_opts, as doit's own API run_tasks does): the task
  declares one option, dali.steps.GIVEN, and its action takes the values from it (values()).

Nothing else in dali/ or tasks/ reads doit's command line (tests/test_verbs.py checks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from doit.cmd_run import Run
from doit.doit_cmd import reset_vars, set_var

from dali.errors import DaliError
from dali.steps import GIVEN

USAGE_ERROR = 2  # a mistake in the command line, told apart from a run that failed (1)


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake raised as a DaliError (one line) instead of usage and exit 2."""

    def error(self, message: str):
        raise DaliError(f"{message.removeprefix('argument ')} ({self.prog} --help says how)")


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a whole number, not '{text}'") from None


class Verb(Run):
    """A doit command that runs the task of its own name with the words typed after it."""

    doc_purpose = ""  # one line, for `doit help` and the top of -h
    usage = None  # argparse's, unless it says less than it should
    free_words = ""  # the dest of the positional that takes every word that is not an option
    options_first = False  # True: options only before the first other word (pssh's command has its own)

    @staticmethod
    def declare(parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        parser = _Parser(prog=f"doit {cls.name}", usage=cls.usage, description=cls.doc_purpose,
                         allow_abbrev=False)
        cls.declare(parser)
        return parser

    @classmethod
    def parse(cls, words: list[str]) -> argparse.Namespace:
        if words and words[0].startswith("config="):
            # The verb's own word (pssh would run it as the command's first word), not the
            # cluster file: refused, or `doit pssh config=other.toml CMD` ran CMD on the
            # cluster of ./cluster.toml. A command that starts so goes after `--`.
            raise DaliError(f"{words[0]}: a cluster file goes before the verb or at the end "
                            f"(doit {words[0]} {cls.name} ... or doit {cls.name} ... {words[0]})")
        parser = cls.parser()
        if cls.options_first:
            given, left = parser.parse_known_args(words)
        else:  # the words after `--` added here: Python 3.11's intermixed parsing reads options there
            end = words.index("--") if "--" in words else len(words)
            given, left = parser.parse_known_intermixed_args(words[:end])
            if cls.free_words:
                getattr(given, cls.free_words).extend(words[end + 1:])
            else:
                left += words[end + 1:]
        if left:  # what argparse did not know, and the words after it
            word = next((w for w in left if w.startswith("-")), left[0])
            raise DaliError(f"{word}: no such option of doit {cls.name} "
                            f"(doit {cls.name} --help lists them)")
        return given

    def help(self) -> str:
        """`doit help VERB`: what -h prints."""
        return self.parser().format_help()

    def parse_execute(self, in_args: list[str]) -> int:
        variables, words = typed_after(in_args, sys.argv)
        try:
            given = self.parse(words)
        except DaliError as e:
            print(f"dali: {self.name}: {e}", file=sys.stderr)
            return USAGE_ERROR
        _variables_are(variables)
        self.loader.task_opts = {self.name: {GIVEN["name"]: given}}
        params, _ = self.cmdparser.parse([])  # doit's own options: the defaults and DOIT_CONFIG
        params.update(self.opt_vals)
        return self.execute(params, [self.name])


def _is_variable(word: str) -> bool:
    """What doit takes for a command-line variable (doit.doit_cmd.DoitMain.process_args)."""
    return not word.startswith("-") and "=" in word


def _variables_are(words: list[str]) -> None:
    """doit's command-line variables these NAME=VALUE words, and no others: doit also took the
    verb's own words with a '=' for variables."""
    reset_vars()
    for word in words:
        set_var(*word.split("=", 1))


def typed_after(kept: list[str], argv: list[str]) -> tuple[list[str], list[str]]:
    """(doit's variables, the verb's words) as typed. doit hands a command the words after its
    name less the variables (kept); those words end the command line, so counting back from
    its end over as many words that are not variables, the word before them is the verb's name.
    The variables are those before the name, and any config=PATH at the end."""
    start = len(argv)
    for _ in range(len(kept) + 1):
        start -= 1
        while _is_variable(argv[start]):
            start -= 1
    before, words = [w for w in argv[1:start] if _is_variable(w)], argv[start + 1:]
    end = len(words)
    while end and words[end - 1].startswith("config="):
        end -= 1
    return before + words[end:], words[:end]


def snapshot_name(text: str) -> str:
    """A snapshot's name as dali/snapshot_store.py allows it, or argparse's one line."""
    from dali.snapshot_store import check_name  # here: only a doit given a name loads it
    try:
        return check_name(text)
    except DaliError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def values(verb: str, given: argparse.Namespace | None) -> dict:
    """The verb's values as keyword arguments: what its command parsed (given), or its defaults
    for a task run otherwise."""
    return vars(given if given is not None else VERBS[verb].parse([]))


# --- the verbs -------------------------------------------------------------------------------

NODES = "only these nodes: suffixes or names, comma-separated"


class Torture(Verb):
    name = "torture"
    doc_purpose = ("workloads on every running node at once, checked; faults in the middle "
                   "(doit torture --list)")
    free_words = "workloads_named"

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        p.add_argument("workloads_named", nargs="*", metavar="WORKLOAD",
                       help="a workload, with its parameters as WORKLOAD:key=value,... "
                            "(lock:kind=flock); none: every workload that runs on the target")
        p.add_argument("--on", default="", metavar="b,c", help=NODES)
        p.add_argument("--seconds", type=whole_number, metavar="N",
                       help="how long every workload runs (default 30)")
        p.add_argument("--list", dest="show_list", action="store_true",
                       help="list the workloads, one line each")
        p.add_argument("--script", default="", metavar="PATH",
                       help="your own executable, run on every node (DALI_NODE, DALI_NODE_INDEX, "
                            "DALI_NODES, DALI_TARGET)")
        p.add_argument("--target", default="", metavar="DIR",
                       help="a directory (or the device) on the nodes instead of the mounted "
                            "filesystem or the device")
        p.add_argument("--crash", action="append", default=[], metavar="NODE@SECONDS",
                       help="force the node off then, as pulling the plug (repeatable)")
        p.add_argument("--partition", action="append", default=[], metavar="NODE@SECONDS+DURATION",
                       help="its network link down then, up again after DURATION (repeatable)")
        p.add_argument("--seed", type=whole_number, default=0, metavar="N",
                       help="the workloads' random seed, to repeat a run (0: a new one, printed)")
        p.add_argument("--compare-disk", action="store_true",
                       help="run each workload on the NVDIMM and on a shared virtio disk, side by side")
        p.add_argument("--count", type=whole_number, default=1, metavar="N",
                       help="run it N times, each from a fresh work directory; report per workload "
                            "how many runs failed and the first (default 1)")
        p.add_argument("--from", dest="from_snapshot", type=snapshot_name, default=None, metavar="NAME",
                       help="start each run (each of --count) from this snapshot: doit rollback NAME "
                            "first (doit snapshots lists them)")


class Dump(Verb):
    name = "dump"
    doc_purpose = ("the memory of every running node (or those named) at the same moment: "
                   "paused, dumped, resumed")
    free_words = "names"

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        p.add_argument("names", nargs="*", metavar="NODE", help="a node's suffix or name")


class Pssh(Verb):
    name = "pssh"
    doc_purpose = "run a shell command on every running node (--on b,c: those) through the guest agent"
    usage = "doit pssh [--on b,c] [--timeout SECONDS] [--] CMD ..."  # argparse's ends in "..." only
    options_first = True

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        p.add_argument("--on", default="", metavar="b,c", help=NODES)
        p.add_argument("--timeout", type=whole_number, default=3600, metavar="SECONDS",
                       help="seconds per node")
        p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD ...",
                       help="the command, every word after the options as typed; -- before one "
                            "that starts with a -")

    @classmethod
    def parse(cls, words: list[str]) -> argparse.Namespace:
        given = super().parse(words)
        if given.command[:1] == ["--"]:  # argparse keeps the -- that ends the options
            del given.command[0]
        if not given.command:
            raise DaliError(f"doit pssh needs a command: {cls.usage}")
        return given


class Pput(Verb):
    name = "pput"
    doc_purpose = "put a file on every running node (--on b,c: those): doit pput SRC DEST"
    usage = "doit pput [--on b,c] [--] SRC DEST"
    free_words = "paths"

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        p.add_argument("paths", nargs="*", metavar="SRC DEST",
                       help="a file here, and its path on the nodes (ending in /: a directory, the "
                            "file's name kept)")
        p.add_argument("--on", default="", metavar="b,c", help=NODES)

    @classmethod
    def parse(cls, words: list[str]) -> argparse.Namespace:
        given = super().parse(words)
        if len(given.paths) != 2:
            raise DaliError(f"doit pput needs a source and a destination: {cls.usage}")
        source, dest = given.paths
        return argparse.Namespace(source=Path(source), dest=dest, on=given.on)


class Coherence(Verb):
    name = "coherence"
    doc_purpose = ("what the checked nodes found since they booted: unflushed and stale reads, lost "
                   "writes (device.coherence; docs/coherence.md)")

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        p.add_argument("--reset", action="store_true", help="zero the findings: count again from now")
        p.add_argument("--binary", dest="binaries", action="append", default=[], metavar="PATH",
                       help="a program the nodes ran (built -no-pie): its functions named (repeatable)")


class Runs(Verb):
    name = "runs"
    doc_purpose = ("the torture runs kept (time, workloads, kernel, verdict); `doit runs compare A B` "
                   "side by side, per workload and run")
    usage = "doit runs [compare RUN RUN ...]"
    free_words = "words"

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        p.add_argument("words", nargs="*", metavar="compare RUN", help="compare these runs (ids or "
                       "their beginnings, as doit runs lists them)")


class Snapshot(Verb):
    name = "snapshot"
    doc_purpose = ("every node's memory and disk and the FAM, at one instant, kept as NAME; "
                   "--delete NAME removes one (docs/snapshots.md)")
    usage = "doit snapshot NAME | doit snapshot --delete NAME"
    free_words = "names"

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        p.add_argument("names", nargs="*", type=snapshot_name, metavar="NAME",
                       help="the snapshot's name: letters, digits, '.', '_' and '-'")
        p.add_argument("--delete", action="store_true", help="remove the snapshot NAME")

    @classmethod
    def parse(cls, words: list[str]) -> argparse.Namespace:
        given = super().parse(words)
        if len(given.names) != 1:
            raise DaliError(f"doit snapshot takes one name: {cls.usage}")
        return argparse.Namespace(name=given.names[0], delete=given.delete)


class Snapshots(Verb):
    name = "snapshots"
    doc_purpose = "the snapshots kept: when, which nodes ran, their size on disk"

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        pass


class Rollback(Verb):
    name = "rollback"
    doc_purpose = ("every node and the FAM back to the snapshot NAME; the nodes that ran then, "
                   "resumed together (what runs now is thrown away)")
    usage = "doit rollback NAME"
    free_words = "names"

    @staticmethod
    def declare(p: argparse.ArgumentParser) -> None:
        p.add_argument("names", nargs="*", type=snapshot_name, metavar="NAME", help="the snapshot")

    @classmethod
    def parse(cls, words: list[str]) -> argparse.Namespace:
        given = super().parse(words)
        if len(given.names) != 1:
            raise DaliError(f"doit rollback takes one snapshot's name: {cls.usage} (doit snapshots lists them)")
        return argparse.Namespace(name=given.names[0])


VERBS = {verb.name: verb for verb in (Torture, Dump, Pssh, Pput, Coherence, Runs, Snapshot, Snapshots, Rollback)}
