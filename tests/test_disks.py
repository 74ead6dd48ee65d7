"""Node disks on real qcow2 files (qemu-img, fast): what is made from what, what is refused,
and what clean may delete. libvirt is the in-memory test driver."""

import re
import shutil

import pytest

from dali import disks, domain, marks
from dali.commands import run
from dali.errors import DaliError
from dali.storage.local import backing_file
from support.files import local_files


@pytest.fixture
def files(config_in):
    files = local_files(config_in)
    yield files
    for name in files.virt.our_domains():
        files.virt.conn.lookupByName(name).undefine()


@pytest.fixture
def virt(files):
    return files.virt


@pytest.fixture
def base(config_in, files):
    return disks.base_disk(config_in, files)


@pytest.fixture
def built(config_in, files, base):
    """A cluster with an image: image/base.qcow2 (an empty 1G qcow2) and the original's disk."""
    marks.make_dir(config_in.data_dir, config_in)
    marks.make_dir(files.image_dir, config_in)
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], what="qemu-img")
    marks.mark(base, config_in)
    disks.create(config_in, files, config_in.original_node)
    return config_in


def test_the_original_is_built_on_the_image_and_private(built, base):
    disk = built.disk(built.original_node)
    assert backing_file(disk) == str(base)
    assert marks.is_ours(disk, built)
    assert oct(disk.stat().st_mode & 0o777) == "0o640"  # root and qemu's group only


def test_a_file_at_our_name_that_we_did_not_make_is_refused(built, files):
    stranger = built.disk(built.clone_nodes[0])
    stranger.write_bytes(b"somebody's")
    with pytest.raises(DaliError, match="did not make it"):
        disks.create(built, files, built.clone_nodes[0])
    assert stranger.read_bytes() == b"somebody's"


def test_a_freeze_killed_after_its_rename_resumes_on_the_frozen_disk(built, files, virt):
    disk = built.disk(built.original_node)
    # freeze(), killed right after `mv ivpa.qcow2 frozen.qcow2`:
    marks.mark(disk, built, also=(built.frozen_disk,))
    disk.rename(built.frozen_disk)
    disks.create(built, files, built.original_node)  # what disk:ivpa does on the next run
    assert backing_file(disk) == str(built.frozen_disk), "never a blank disk on the image"
    disks.freeze(built, files, virt)
    assert disks.is_frozen(built, files) and backing_file(disk) == str(built.frozen_disk)


def test_linked_and_copy_clones(built, files, virt):
    disks.freeze(built, files, virt)
    b = built.clone_nodes[0]
    disks.create(built, files, b)
    assert backing_file(built.disk(b)) == str(built.frozen_disk)


def test_clean_keeps_what_a_users_copy_is_built_on(built, files, virt, capfd):
    disks.freeze(built, files, virt)
    b = built.clone_nodes[0]
    disks.create(built, files, b)
    keep = built.data_dir / "ivpb-keep.qcow2"
    shutil.copy2(built.disk(b), keep)  # the user's copy of a linked clone, beside ours
    files.remove(built.disk(b))
    files.remove(keep)
    files.remove(built.frozen_disk)
    assert not built.disk(b).exists() and keep.exists() and built.frozen_disk.exists()
    said = capfd.readouterr().err
    assert "left" in said and str(keep) in said


def test_clean_stops_at_a_file_a_domain_still_uses(built, files, virt):
    xml = domain.domain_xml(built, local_files(built), built.original_node, "test")
    virt.conn.defineXML(re.sub(r"<qemu:commandline>.*</qemu:commandline>", "", xml, flags=re.S))
    with pytest.raises(DaliError, match="still used by domain ivpa"):
        files.remove(built.disk(built.original_node))
    assert built.disk(built.original_node).exists()


def test_clean_in_doits_order_leaves_nothing(built, files, virt, base):
    """doit cleans freeze (frozen.qcow2) before disk:ivpa, the original's disk built on it: the
    frozen disk is skipped quietly then, and the sweep at the end takes it and the image."""
    from dali.preflight import sweep
    disks.freeze(built, files, virt)
    disks.create(built, files, built.clone_nodes[0])
    for path in (built.disk(built.clone_nodes[0]), built.frozen_disk, built.disk(built.original_node), base):
        files.remove(path)
    assert built.frozen_disk.exists()
    sweep(built, files, dryrun=False)
    assert not built.data_dir.exists()
