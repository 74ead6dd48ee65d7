"""Which of the two pytest workers (pyproject.toml: -n 2) runs which module, and in what order:
tests/conftest.py's hooks hand pytest and xdist these (docs/testing.md, "Time")."""

from __future__ import annotations

from pathlib import Path

import pytest

# A module that boots guests builds its cluster once, in a module or session fixture, so all its
# tests run in one worker; the modules of a group below share one session cluster, and run in one
# worker, in the order listed (each lives in what the one before leaves). Longest first, so that the two
# workers finish together (docs/testing.md has the figures). The modules without guests come
# right after the first group: the first worker takes that group, the second the quick modules,
# meanwhile the first builds the checkout's image (on a fresh checkout, a minute and a half of
# debootstrap, which any cluster the second worker started would only wait for), then the rest.
# Every module marked guest must be listed here.
CLUSTER_MODULES = [
    # the OCFS2 cluster (conftest.ocfs2_cluster); test_remote.py runs its remote cluster beside it;
    # test_snapshots.py takes it back and forth in time before test_torture.py, whose last tests
    # boot it on another kernel and clean it away
    ("test_shared_fs.py", "test_remote.py", "test_snapshots.py", "test_torture.py"),
    # conftest.dax_cluster: checked (OCFS2 on fsdax, then devdax), then unchecked devdax and
    # cleaned; the second worker's first cluster, after the quick modules, while the first
    # worker runs the OCFS2 group
    ("test_coherence.py", "test_device_modes.py"),
    ("test_cluster.py", "test_cluster_living.py"),  # the first cluster (conftest.first_cluster)
    ("test_kill.py",),
    ("test_kernel_loop.py",),
    ("test_two_clusters.py",),
]
GROUP_OF = {module: group for group, modules in enumerate(CLUSTER_MODULES) for module in modules}
PLACE_IN_GROUP = {module: place for modules in CLUSTER_MODULES for place, module in enumerate(modules)}


QUICK_AFTER = 1  # the modules without guests go after this many groups of CLUSTER_MODULES
# ... but for these, the longest of them, which go last: the second worker's quick modules then
# take about as long as the first worker's wait for the checkout's image (a minute and a half
# on a fresh checkout), so the dax group starts once the image is there; and whichever worker
# ends its last cluster first runs them, where it would otherwise wait for the other
# (2026-12-06: the last 50 s of a run on one worker, the other idle).
QUICK_LAST = ("test_refusals.py", "test_workloads.py")


def in_order(items) -> None:
    """The first QUICK_AFTER groups of CLUSTER_MODULES, the modules without guests in file
    order but QUICK_LAST, then the other groups, then QUICK_LAST; a group's modules in the
    order it lists them."""
    unlisted = sorted({item.path.name for item in items
                       if item.get_closest_marker("guest") and item.path.name not in GROUP_OF})
    if unlisted:
        raise pytest.UsageError(f"{', '.join(unlisted)}: a module marked guest must be listed in "
                                "tests/support/schedule.py's CLUSTER_MODULES (which worker runs it)")
    order = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (_place(item.path.name), PLACE_IN_GROUP.get(item.path.name, 0), order[id(item)]))


def _place(module: str) -> float:
    if module in QUICK_LAST:
        return len(CLUSTER_MODULES)
    return GROUP_OF.get(module, QUICK_AFTER - 0.5)


def by_cluster(config, log):
    """xdist's loadfile, with each group of CLUSTER_MODULES one unit of work, in the order
    collected. (Not xdist_group marks: pytest 9 ignores the node ids xdist 3.8 rewrites for them.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByCluster(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            group = GROUP_OF.get(Path(path).name)
            return path if group is None else CLUSTER_MODULES[group][0]

        def _reschedule(self, node) -> None:
            # xdist hands a worker its next unit once it has two tests left to run. A group's
            # last tests can take minutes (test_torture's two kernels, 95 s), so the worker
            # running the OCFS2 group took test_kernel_loop while the other, free a minute
            # later, got only test_two_clusters, and the run ended on one worker (2026-12-06:
            # 77 s of one core idle at the end). With one test left, the one a worker holds
            # until it has more work or is told to stop, the next unit goes to whichever
            # worker is about to be free.
            if self.workqueue and not node.shutting_down and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

    config.option.loadscopereorder = False  # the collection's order: longest first
    return ByCluster(config, log)
