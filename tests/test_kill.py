"""Kill anywhere, run again, converge: a real `doit` on qemu:///system, killed (SIGKILL, and
SIGINT as Ctrl-C sends it) at every task boundary of a cold run and in the middle of every long
step, each time followed by a `doit` that carries on from where it was stopped; then the same
for `doit clean`. The end is held to exactly what an uninterrupted run leaves
(support.cluster.assert_built), and to nothing at all after the clean.

The kills are chained: the run after a kill is the one that meets the next kill point, so every
run has to pick up what the previous one left. The cold run builds on the debootstrap tarball
and node image every cluster of the checkout shares (state/cache/), as a user's second
cluster does: the builds of those two (`image:rootfs`, a minute of debootstrap; the node image
`image:base` copies) are killed in a test of their own, on a recipe that adds one small
package, so they are its own and are removed afterwards; a run stopped once debootstrap has
finished carries on from its tree.
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from dali.image_builder import kept_tree
from dali.scratch import abandoned_work, remove_tree
from support.cluster import ClusterUnderTest, assert_built, debootstrap_of, files_under, unique_tag
from support.doit import run_until

pytestmark = [pytest.mark.libvirt, pytest.mark.guest]

TAG = unique_tag("dalikill")
KILL, INT = signal.SIGKILL, signal.SIGINT

# (what doit prints, signal, seconds to wait after it): ".  TASK" is printed as TASK starts, so
# a kill there falls on the boundary between the task before and TASK.
BUILD = [  # in the order a cold run starts them (test_graph.py checks)
    (r"^\.  network$", KILL, 0),
    (r"^\.  image:sshkey$", INT, 0),
    (r"^\.  fam$", KILL, 0),
    (r"^\.  apparmor$", INT, 0),
    (r"^\.  image:base$", INT, 0),
    (r"^copying the node image", KILL, 0),                 # image:base, copying the cached image
    (r"^\.  access$", KILL, 0),
    # accel and the original's disk both follow the image, in either order
    (rf"^\.  (accel|disk:{TAG}a)$", INT, 0),
    (rf"^\.  (accel|disk:{TAG}a)$", KILL, 0),
    (rf"^\.  render:{TAG}a$", INT, 0),
    (rf"^\.  define:{TAG}a$", KILL, 0),
    (r"^\.  original:boot$", INT, 0),
    # booting: a node's agent answers about 8 s after its start at best, so both land in the boot
    (rf"^{TAG}a: started; waiting for its guest agent", KILL, 4),
    (rf"^{TAG}a: started; waiting for its guest agent", INT, 2),    # booting, again
    (r"^\.  original:reconfigure$", KILL, 0),
    (rf"^{TAG}a: ndctl create-namespace", INT, 0),         # reconfiguring
    (r"^\.  original:shutdown$", KILL, 1),                 # shutting down
    # freeze and golden both follow the shutdown, in either order: each point takes whichever starts
    (r"^\.  (freeze|golden)$", INT, 0),
    (r"^\.  (freeze|golden)$", KILL, 0),
    (rf"^\.  disk:{TAG}b$", KILL, 0.2),                    # a copy clone's disk, halfway
    (rf"^\.  define:{TAG}b$", INT, 0),
]
# The run killed 4 s into the original's boot leaves its qemu running: the next run, slow to
# start on a loaded host, finds it booted already, and a Ctrl-C 2 s in lands after the boot
# (in ndctl), which the next point then never meets. That qemu is forced off first, as a host
# that lost it would leave it, so this point falls in a boot, however loaded the host is.
FRESH_BOOT = (rf"^{TAG}a: started; waiting for its guest agent", INT, 2)
TARBALL = [  # doit image:rootfs: the debootstrap tarball, on a recipe no other cluster uses
    (r"^\.  image:rootfs$", INT, 0),
    # Each killed debootstrap starts again from nothing: killed as early in each of its two
    # stages as they can be told apart (about 13 s and 20 s in, of 56)
    (r"^I: Checking component main", KILL, 3),             # debootstrap's first stage: fetching, extracting
    (r"^I: Unpacking required packages", INT, 0),          # its second stage: dpkg in its chroot, /proc mounted
    # customising and writing the tarball take a second or two each now: killed as they start
    (r"^customising the guest tree", KILL, 0),
    (r"^writing .*/rootfs-", INT, 0),                      # tar, on the tree kept from the run before
]
NODE_IMAGE = [  # doit image:base: the node image cached for that recipe, then the cluster's copy
    (r"^unpacking rootfs-", INT, 0.5),
    (r"^mkfs\.ext4 -d into", KILL, 1),                     # halfway
]
# Clean says one line per object it removes (dali/cleaning.py), in doit's clean order, which
# depends on what is left: a node shut down and undefined, then its disk; the image's files and
# the identity disks, the network, the FAM and its AppArmor rule; then the sweep (what was built
# on, the directories, state/<tag>/). Each kill lands right after one of those lines; the last,
# with the run held as the sweep begins (tests/support/held_doit.py): the rest of the clean
# takes milliseconds, and the Ctrl-C sent on the line landed once as the process exited (-2).
SWEEP = ("--before", "dali.preflight:sweep")
CLEAN = [  # (what clean prints, signal, seconds to wait after it, where the run is held)
    (rf"^{TAG}[ab]: shutting down", KILL, 1, ()),              # shutting a running node down
    (rf"^removed node {TAG}[ab]$", INT, 0, ()),                 # a node undefined, its disk still there
    # the nodes' disks gone, the image to go: held there (the image's removals are unlinks, a
    # kill sent on the disk's line landed after them at times, and the next point was missed)
    (rf"^removed file .*/{TAG}a\.qcow2$", KILL, 0, ("--before", "dali.image:remove_node_image")),
    (r"^removed file .*/image/initrd\.img$", INT, 0, ("--after", "dali.image:remove_node_image")),  # the image gone
    (r"^removed network ", KILL, 0, ()),                       # the network gone, the FAM still there
    (r"^removed AppArmor rule ", INT, 0, SWEEP),               # the FAM and its rule gone, the sweep to come
]
# (No point inside the sweep itself: its rmdirs take microseconds, and a kill sent on one of its
# lines lands after the rest. Each point is held where it must land, or is followed by a step
# that takes milliseconds at least, a libvirt call or apparmor_parser, before the next point's object goes.)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # The original boots and makes the namespace, whatever the checkout's cache holds
    # (dali/namespaces.py): its boot and its ndctl are kill points.
    c = ClusterUnderTest(tmp_path_factory.mktemp(TAG) / "cluster.toml", TAG, clones=["b"],
                         clone={"mode": "copy"}, device={"namespace_from": "original"})
    yield c
    c.teardown()


@pytest.fixture
def own_recipe(tmp_path_factory):
    """A cluster whose recipe adds one small package: a tarball of its own to kill the
    debootstrap of, removed afterwards with its log (unless it was there before)."""
    tag = unique_tag("dalideb")
    c = ClusterUnderTest(tmp_path_factory.mktemp(tag) / "cluster.toml", tag,
                         image={"extra_packages": ["less"]})
    made_before = set(c.cfg.cache_dir.glob(f"rootfs-{_recipe_hash(c)}.*"))
    node_image = _node_image(c)
    node_image_before = node_image.exists()
    yield c
    c.teardown()
    for made in set(c.cfg.cache_dir.glob(f"rootfs-{_recipe_hash(c)}.*")) - made_before:
        made.unlink()
    if not node_image_before:
        remove_tree(node_image)
    # and the finished debootstrap tree a failed test left for a next run to carry on from
    remove_tree(kept_tree(c.cfg.cache_dir / f"rootfs-{_recipe_hash(c)}.tar"))


def _node_image(c: ClusterUnderTest):
    """Where the node image of the cluster's recipe is cached."""
    from dali.image_builder import node_image_path
    from dali.initramfs import init_path
    tarball = c.cfg.cache_dir / f"rootfs-{_recipe_hash(c)}.tar"
    return node_image_path(tarball, c.cfg.image.disk_size, init_path(c.cfg.cache_dir))


def _recipe_hash(c: ClusterUnderTest) -> str:
    from dali.image_builder import rootfs_recipe, rootfs_tarball_path
    image = c.cfg.image
    path = rootfs_tarball_path(rootfs_recipe(image.suite, image.mirror, image.http_proxy,
                                             list(image.extra_packages)), c.cfg.cache_dir)
    return path.stem.split("-", 1)[1]


def test_a_killed_image_build_converges(own_recipe):
    """doit image:rootfs killed as it starts, in debootstrap's first stage, in its chroot and
    while the tree is customised: the next run removes what the killed one left (its tree, its
    processes) and makes the tarball; nothing half-made remains. Then doit image:base, killed
    while it builds the node image from that tarball: the next one builds it whole, and the
    cluster's image is a copy of it."""
    c = own_recipe
    tarball = c.cfg.cache_dir / f"rootfs-{_recipe_hash(c)}.tar"
    tarball.unlink(missing_ok=True)
    remove_tree(_node_image(c))
    outputs = []
    for pattern, sig, delay in TARBALL:
        reached, output = run_until(c, pattern, sig, delay, "image:rootfs")
        assert reached, f"kill point never reached: {pattern}"
        assert not tarball.exists(), "no tarball that looks done"
        outputs.append(output)
    run = c.doit("image:rootfs")
    last = run.stdout + run.stderr  # dali's lines go to stderr, doit's to stdout
    for after_debootstrap in (outputs[-1], last):  # stopped while customising, then in its tar
        assert "carrying on from the debootstrap tree" in after_debootstrap, after_debootstrap
        assert "debootstrap bookworm" not in after_debootstrap, "a finished debootstrap is not run again"
    assert tarball.exists() and tarball.with_suffix(".log").exists()
    assert not abandoned_work(c.cfg.cache_dir), "abandoned work"
    assert not kept_tree(tarball).exists(), \
        "the finished debootstrap tree is gone once its tarball is written"
    leftovers = subprocess.run(["pgrep", "-af", debootstrap_of(c)], capture_output=True,
                               text=True).stdout.strip()
    assert not leftovers, leftovers
    listed = subprocess.run(["tar", "-tf", str(tarball)], capture_output=True, text=True, check=True).stdout
    assert "./usr/bin/less\n" in listed, "the recipe's own package is in it"
    assert re.findall(r"^\.  (\S+)", c.doit("image:rootfs").stdout, re.M) == [], "and nothing left to do"

    for pattern, sig, delay in NODE_IMAGE:
        reached, output = run_until(c, pattern, sig, delay, "image:base")
        assert reached, f"kill point never reached: {pattern}"
        assert not _node_image(c).exists(), "no node image that looks done"
    c.doit("image:base")
    assert not abandoned_work(c.cfg.cache_dir), "abandoned work"
    built = _node_image(c)
    for name in ("base.qcow2", "vmlinuz", "initrd.img"):
        assert (c.files.image_dir / name).read_bytes() == (built / name).read_bytes(), name
    assert re.findall(r"^\.  (\S+)", c.doit("image:base").stdout, re.M) == [], "and nothing left to do"


def test_a_cold_run_killed_at_every_step_converges(cluster):
    missed = []
    for pattern, sig, delay in BUILD:
        if (pattern, sig, delay) == FRESH_BOOT and cluster.dom("a").isActive():
            cluster.dom("a").destroy()
        reached, _ = run_until(cluster, pattern, sig, delay)
        if not reached:
            missed.append(pattern)
            break  # the run went to the end: nothing more to kill
    assert not missed, f"kill points never reached: {missed}"
    cluster.doit()
    assert_built(cluster, ["b"])
    print(f"{len(BUILD)} kill points of the build tried, each run carried on, the end state matches")


def test_a_clean_killed_at_every_step_converges(cluster):
    cluster.doit("start")  # so that clean has running nodes to shut down
    for pattern, sig, delay, hold in CLEAN:
        reached, _ = run_until(cluster, pattern, sig, delay, "clean", hold=hold)
        assert reached, f"kill point never reached: {pattern}"
    cluster.doit("clean")
    assert not cluster.virt.our_domains()
    assert cluster.cfg.network.name not in [n.name() for n in cluster.virt.conn.listAllNetworks()]
    assert not cluster.cfg.data_dir.exists() and not cluster.cfg.state_dir.exists()
    assert str(cluster.cfg.fam_path) not in cluster.cfg.apparmor_template.read_text()
    assert not files_under(cluster.data_dir.parent)
    print(f"{len(CLEAN)} kill points of clean tried, the next clean left nothing")
