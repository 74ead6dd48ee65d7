"""The one storage interface (dali/storage/), held to the same contract in both places a
cluster's files can live: a directory of this machine (LocalDir) and a libvirt storage pool
(LibvirtPool, here a directory pool of this machine's libvirtd: the storage API a remote
host's libvirtd offers; test_remote.py runs whole clusters on a second daemon). Real files,
real qemu-img, a real libvirtd; no guest: quick.

Then what the issue behind it found, on both: a FAM with bytes to put back is not ready (a
remote cluster ignored them), a reset:fam killed between its two halves leaves a FAM every run
accepts, --compare-disk's shared disk is made where the files live (not a local file at the
remote path), and a pool's directory others could write is refused."""

from __future__ import annotations

import os
import time

import pytest

from dali import fam, reset, settings, shared_disk
from dali.errors import DaliError
from dali.preflight import make_state_dir
from dali.storage.local import LocalDir
from dali.storage.pool import LibvirtPool, name
from dali.virt import Libvirt
from support.cluster import unique_tag

pytestmark = pytest.mark.libvirt
MiB = 1 << 20


@pytest.fixture(params=["local", "pool"])
def files(request, data_dir, tmp_path):
    cluster = settings.load(env={"DALI_DIR": str(data_dir), "DALI_TAG": unique_tag("dalistore")},
                            repo=tmp_path)
    cluster = cluster._replace(fam_size=64 * MiB, max_memory=cluster.memory + 64 * MiB)
    virt = Libvirt("qemu:///system", cluster.id)
    files = (LocalDir if request.param == "local" else LibvirtPool)(cluster, virt)
    make_state_dir(cluster)
    files.prepare()
    yield files
    files.sweep()
    try:  # a test that failed may leave the pool
        left = virt.conn.storagePoolLookupByName(name(cluster))
    except Exception:
        return
    if left.isActive():
        left.destroy()
    left.undefine()


def test_a_file_allocated_whole_read_and_written_in_place(files):
    fam_path = files.cluster.fam_path
    assert not files.exists(fam_path) and not files.have(fam_path)
    files.allocate(fam_path, 64 * MiB, for_qemu=True)
    assert files.have(fam_path) and files.complete(fam_path) and files.size(fam_path) == 64 * MiB
    assert files.allocated(fam_path) >= 64 * MiB, "allocated whole: qemu never meets a full disk"
    assert files.qemu_may_use(fam_path)
    identity = files.identity(fam_path)
    files.write(fam_path, {MiB + 5: b"shared", 3 * MiB: b"bytes"})
    assert files.read(fam_path, MiB + 5, 6) == b"shared"
    assert files.nonzero_mib(fam_path, 0) == 2 and files.nonzero_mib(fam_path, 2 * MiB) == 1
    assert files.identity(fam_path) == identity, "the same file, written in place"


def test_put_replaces_a_file_whole_and_keeps_what_dali_wrote_down(files, tmp_path):
    path = files.image_dir / "vmlinuz"
    files.put(path, b"first", stamp="one")
    assert files.read(path, 0, 5) == b"first" and files.fact(path, "stamp") == "one"
    local = tmp_path / "second"
    local.write_bytes(b"second, longer")
    files.put(path, local, stamp="two")
    assert files.read(path, 0, 100) == b"second, longer" and files.fact(path, "stamp") == "two"
    assert files.complete(path) and path in files.our_files() + [files.image_dir / "vmlinuz"]


def test_disks_overlay_copy_and_move(files):
    cluster = files.cluster
    base, a, frozen, b = (cluster.data_dir / n for n in ("base.qcow2", "a.qcow2", "frozen.qcow2", "b.qcow2"))
    files.put(base, _empty_qcow2(files.cluster.state_dir / "base.qcow2"))
    files.overlay(a, base, 2 << 30)
    assert files.backing(a) == str(base) and files.built_on(base) == ([a], [])
    files.move(a, frozen)  # (a rename here; a copy, then a deletion, in a pool)
    assert not files.exists(a) and files.complete(frozen)
    files.move(a, frozen)  # run again after a kill: nothing left to do
    files.copy(b, frozen)
    assert files.have(b) and files.backing(b) is None, "a copy stands alone"
    files.overlay(a, frozen, 2 << 30)
    files.remove(frozen)
    assert files.exists(frozen), "kept until the disk built on it is gone"
    files.remove(a)
    files.remove(frozen)
    assert not files.exists(a) and not files.exists(frozen)


def test_a_file_dali_did_not_make_is_never_used_or_deleted(files):
    stranger = files.cluster.data_dir / "somebody.qcow2"
    _write_behind_dalis_back(files, stranger, b"theirs")
    with pytest.raises(DaliError, match="did not make it"):
        files.have(stranger)
    with pytest.raises(DaliError, match="did not make it"):
        files.put(stranger, b"ours")
    files.remove(stranger)
    assert stranger.read_bytes() == b"theirs"
    stranger.unlink()


def test_a_fam_with_bytes_to_put_back_is_not_ready(files):
    """A remote cluster's fam task looked at the FAM's size only: doit start and mkfs --yes went
    on with bytes a killed verify or torture had saved still to go back."""
    cluster = files.cluster
    fam.ensure(cluster, files, files.virt)
    assert fam.is_ready(cluster, files)
    fam.save_before_write(cluster, files, {MiB: b"user data"}, until=0)
    files.write(cluster.fam_path, {MiB: b"workload!"})
    assert not fam.is_ready(cluster, files), "so the next doit's fam task puts them back"
    fam.ensure(cluster, files, files.virt)
    assert files.read(cluster.fam_path, MiB, 9) == b"user data" and fam.is_ready(cluster, files)


def test_a_reset_of_the_fam_killed_halfway_leaves_a_fam_every_run_accepts(files):
    """reset:fam truncated the FAM to 0 bytes, then set its size again: killed in between, it
    left a FAM every later run refused. Now the device is zeroed in place, then the reserved
    area written back from the golden copy: killed anywhere, the FAM keeps its size, and
    reset:fam again finishes it."""
    cluster = files.cluster
    fam.ensure(cluster, files, files.virt)
    info = fam.INFO_BLOCK_OFFSET
    files.write(cluster.fam_path, {info: b"NVDIMM_PFN_INFO\0" + bytes(64), 0: b"reserved"})
    files.put_sparse(reset.golden(cluster), cluster.fam_size, cluster.fam_path, 2 * MiB)
    files.write(cluster.fam_path, {5 * MiB: b"device data"})
    files.zero(cluster.fam_path, 2 * MiB)  # ...and here the reset is killed
    assert files.size(cluster.fam_path) == cluster.fam_size and fam.is_ready(cluster, files)
    assert files.read(cluster.fam_path, 5 * MiB, 11) == bytes(11)
    files.copy_head(reset.golden(cluster), cluster.fam_path, 2 * MiB)  # the next reset:fam
    assert files.read(cluster.fam_path, 0, 8) == b"reserved"
    assert files.allocated(cluster.fam_path) >= cluster.fam_size, "allocated again, whole"


def test_the_shared_disk_is_made_where_the_files_live(files):
    """--compare-disk on a remote uri made a FAM-sized local file at the remote path."""
    disk = shared_disk.ensure_file(files.cluster, files)
    assert files.have(disk) and files.size(disk) == files.cluster.fam_size
    assert shared_disk.ensure_file(files.cluster, files) == disk  # kept across runs


def test_a_pool_directory_others_could_write_is_refused(data_dir, tmp_path):
    cluster = settings.load(env={"DALI_DIR": str(data_dir), "DALI_TAG": unique_tag("dalistore")},
                            repo=tmp_path)
    files = LibvirtPool(cluster, Libvirt("qemu:///system", cluster.id))
    data_dir.mkdir()
    for owner, mode in ((0, 0o777), (65534, 0o755)):
        os.chown(data_dir, owner, -1)
        os.chmod(data_dir, mode)
        found = files.problem()
        assert found and "dir (DALI_DIR)" in found and "chown root and chmod go-w" in found, found
    os.chown(data_dir, 0, -1)
    os.chmod(data_dir, 0o755)
    assert files.problem() is None
    assert not files.pool.exists(), "only looked: no pool was made"


def _empty_qcow2(path):
    from dali.commands import run
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "2G"], what="qemu-img")
    return path


def _write_behind_dalis_back(files, path, data: bytes) -> None:
    """A file someone else put where the cluster's files live (this machine's directory; for
    the pool, libvirt finds it at its next refresh)."""
    path.write_bytes(data)
    time.sleep(0.01)
