"""The order in which doit would start the default target's tasks on a cold run (every task out
of date), for a cluster file: `python tests/support/cold_order.py CLUSTER_FILE`, one task per
line. Run in the checkout (it loads dodo.py as doit does), with nothing built or touched: only
doit's task dispatcher is walked, its nodes answered as doit's runner answers them when every task
runs and succeeds (a task with setup tasks, getargs' among them, is handed back once to have them
scheduled first). The order can differ with Python's hash seed (doit keeps some dependencies in
sets), so tests ask for it under several."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def cold_order(cluster_file: str, targets: list[str]) -> list[str]:
    from doit import doit_cmd
    from doit.control import TaskControl
    from doit.loader import generate_tasks

    doit_cmd._CMDLINE_VARS = {"config": cluster_file}  # what `doit config=...` sets for get_var
    checkout = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(checkout))
    spec = importlib.util.spec_from_file_location("dodo", checkout / "dodo.py")
    dodo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dodo)
    tasks = [task for name in dir(dodo) if name.startswith("task_")
             for task in generate_tasks(name[len("task_"):], getattr(dodo, name)())]
    control = TaskControl(tasks)
    control.process(targets or dodo.DOIT_CONFIG["default_tasks"])
    dispatcher = control.task_dispatcher()
    started, node = [], None
    while True:
        try:
            node = dispatcher.generator.send(node)
        except StopIteration:
            return started
        if not hasattr(node, "task"):  # "hold on": nothing ready while tasks wait
            node = None
            continue
        if node.run_status is None:
            node.run_status = "run"
            if node.task.setup_tasks:
                continue  # yielded again once its setup tasks have run
        started.append(node.task.name)
        node.run_status = "successful"


if __name__ == "__main__":
    del sys.path[0]  # this script's directory, whose doit.py is the tests' helper, not doit
    print("\n".join(cold_order(sys.argv[1], sys.argv[2:])))
