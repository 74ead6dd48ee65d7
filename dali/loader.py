"""The first of dali that a doit runs: its task loader, which doit makes before anything else
of a run, and which the checkout's pyproject.toml names ([tool.doit] loader).

It is doit's own dodo.py loader, with dali's handling of Ctrl-C, SIGTERM and SIGHUP installed
as doit makes it (dali/commands.py). dodo.py installs it too, but only once doit has imported
it, and dodo.py's own imports (libvirt, every stage) are most of a short doit: until then a
Ctrl-C was Python's KeyboardInterrupt, a traceback and death by SIGINT, not dali's one line and
exit 130. What runs before this (Python's start, doit's imports and its reading of plugins, some
50 ms) is out of dali's reach: docs/reliability.md.
"""

from doit.cmd_base import DodoTaskLoader

from dali.commands import exit_cleanly_on_signals


class DaliLoader(DodoTaskLoader):
    def __init__(self):
        exit_cleanly_on_signals()
        super().__init__()
