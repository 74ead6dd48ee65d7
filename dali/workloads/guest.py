"""The program each node runs: `python3 torture.pyz run ARGS-AS-JSON` (one workload's run) and
`python3 torture.pyz check-all LIST-OF-ARGS-AS-JSON` (every workload's check on this node, after
the runs, one after the other in this one process).

It prints one line, RESULT followed by the JSON the host reads: common.Recorder.result() for
run; for check-all a list, an entry per args in their order, each {"result": the workload's
check()} or {"error": the last line of its traceback}, so one check that fails fails its own
workload on this node only. Anything else it prints is the node's output, kept in the run's
directory; a failure of the program itself is a traceback on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import sys
import traceback

RESULT = "DALI-TORTURE-RESULT "


def main() -> None:
    from . import WORKLOADS
    from .common import Context, Recorder

    what, args = sys.argv[1], json.loads(sys.argv[2])
    if what == "run":
        ctx = Context(args)
        result = WORKLOADS[ctx.workload].run(ctx, Recorder(ctx.seconds, ctx.start_at))
    elif what == "check-all":
        result = [check(a) for a in args]
    else:
        raise SystemExit(f"usage: python3 torture.pyz run ARGS | check-all [ARGS, ...] (not {what})")
    sys.stdout.write(RESULT + json.dumps(result) + "\n")
    sys.stdout.flush()


def check(args: dict) -> dict:
    """One workload's check, as check-all's entry for it. An exception is its error's entry,
    the line a python3 of its own printed last when each check was one (the host reports it as
    it did then), and the next check goes on: one workload's missing file says nothing of the
    others'. Nothing goes to stderr: the program's last line there is what the host reports when
    the whole process fails (killed, say), and must not be an earlier check's error."""
    from . import WORKLOADS
    from .common import Context

    try:
        ctx = Context(args)
        return {"result": WORKLOADS[ctx.workload].check(ctx)}
    except Exception as e:  # any error of one check is that check's answer, whatever it is
        return {"error": "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1]}
