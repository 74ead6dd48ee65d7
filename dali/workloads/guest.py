"""The program each node runs: `python3 torture.pyz run|check ARGS-AS-JSON`.

It prints one line, RESULT followed by the JSON the host reads (common.Recorder.result() for
run, the workload's check() for check). Anything else it prints is the node's output, kept in
the run's directory; a failure is a traceback on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import sys

RESULT = "DALI-TORTURE-RESULT "


def main() -> None:
    from . import WORKLOADS
    from .common import Context, Recorder

    what, args = sys.argv[1], json.loads(sys.argv[2])
    ctx = Context(args)
    workload = WORKLOADS[ctx.workload]
    if what == "run":
        result = workload.run(ctx, Recorder(ctx.seconds, ctx.start_at))
    else:
        result = workload.check(ctx)
    sys.stdout.write(RESULT + json.dumps(result) + "\n")
    sys.stdout.flush()
