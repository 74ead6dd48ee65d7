"""Node disks on real qcow2 files (qemu-img, fast): what is made from what, what is refused,
and what clean may delete. libvirt is the in-memory test driver."""

import re
import shutil

import pytest

from dali import disks, domain, marks
from dali.errors import DaliError
from dali.virt import Libvirt


@pytest.fixture
def built(config_in):
    """A cluster with an image: image/base.qcow2 (an empty 1G qcow2) and the original's disk."""
    marks.make_dir(config_in.data_dir, config_in)
    marks.make_dir(config_in.image_dir, config_in)
    disks.run(["qemu-img", "create", "-q", "-f", "qcow2", str(config_in.base_disk), "1G"], what="qemu-img")
    marks.mark(config_in.base_disk, config_in)
    disks.create(config_in, config_in.original_node)
    return config_in


@pytest.fixture
def virt(config_in):
    v = Libvirt("test:///default", config_in.id)
    yield v
    for name in v.our_domains():
        v.conn.lookupByName(name).undefine()


def test_the_original_is_built_on_the_image_and_private(built):
    disk = built.disk(built.original_node)
    assert disks.backing_file(disk) == str(built.base_disk)
    assert marks.is_ours(disk, built)
    assert oct(disk.stat().st_mode & 0o777) == "0o640"  # root and qemu's group only


def test_a_file_at_our_name_that_we_did_not_make_is_refused(built):
    stranger = built.disk(built.clone_nodes[0])
    stranger.write_bytes(b"somebody's")
    with pytest.raises(DaliError, match="did not make it"):
        disks.create(built, built.clone_nodes[0])
    assert stranger.read_bytes() == b"somebody's"


def test_a_freeze_killed_after_its_rename_resumes_on_the_frozen_disk(built, virt):
    disk = built.disk(built.original_node)
    # freeze(), killed right after `mv ivpa.qcow2 frozen.qcow2`:
    marks.mark(disk, built, also=(built.frozen_disk,))
    disk.rename(built.frozen_disk)
    disks.create(built, built.original_node)  # what disk:ivpa does on the next run
    assert disks.backing_file(disk) == str(built.frozen_disk), "never a blank disk on the image"
    disks.freeze(built, virt)
    assert disks.is_frozen(built) and disks.backing_file(disk) == str(built.frozen_disk)


def test_linked_and_copy_clones(built, virt):
    disks.freeze(built, virt)
    b = built.clone_nodes[0]
    disks.create(built, b)
    assert disks.backing_file(built.disk(b)) == str(built.frozen_disk)


def test_clean_keeps_what_a_users_copy_is_built_on(built, virt, capfd):
    disks.freeze(built, virt)
    b = built.clone_nodes[0]
    disks.create(built, b)
    keep = built.data_dir / "ivpb-keep.qcow2"
    shutil.copy2(built.disk(b), keep)  # the user's copy of a linked clone, beside ours
    disks.remove_file(built, virt, built.disk(b))
    disks.remove_file(built, virt, keep)
    disks.remove_file(built, virt, built.frozen_disk)
    assert not built.disk(b).exists() and keep.exists() and built.frozen_disk.exists()
    said = capfd.readouterr().err
    assert "left" in said and str(keep) in said


def test_clean_stops_at_a_file_a_domain_still_uses(built, virt):
    xml = domain.domain_xml(built, built.original_node, "test")
    virt.conn.defineXML(re.sub(r"<qemu:commandline>.*</qemu:commandline>", "", xml, flags=re.S))
    with pytest.raises(DaliError, match="still used by domain ivpa"):
        disks.remove_file(built, virt, built.disk(built.original_node))
    assert built.disk(built.original_node).exists()


def test_clean_in_doits_order_leaves_nothing(built, virt):
    """doit cleans freeze (frozen.qcow2) before disk:ivpa, the original's disk built on it: the
    frozen disk is skipped quietly then, and the sweep at the end takes it and the image."""
    from dali.preflight import sweep
    disks.freeze(built, virt)
    disks.create(built, built.clone_nodes[0])
    for path in (built.disk(built.clone_nodes[0]), built.frozen_disk, built.disk(built.original_node),
                 built.base_disk):
        disks.remove_file(built, virt, path)
    assert built.frozen_disk.exists()
    sweep(built, virt, dryrun=False)
    assert not built.data_dir.exists()
