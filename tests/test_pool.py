"""The marker of a cluster's storage pool (dali/pool.py), as a remote cluster keeps it, on a
directory pool of this machine's libvirtd: the storage API a remote host's libvirtd offers
(test_remote.py runs whole clusters on one). A run can be killed in the middle of the marker's
upload; what that leaves is written here by hand, byte for byte. No guest: quick."""

from __future__ import annotations

import pytest

from dali import settings
from dali.errors import DaliError
from dali.storage.pool import MARKER, SLOT, Pool, name
from dali.virt import Libvirt
from support.cluster import unique_tag

pytestmark = pytest.mark.libvirt


@pytest.fixture
def pool(data_dir, tmp_path):
    cluster = settings.load(env={"DALI_DIR": str(data_dir), "DALI_TAG": unique_tag("dalipool")},
                            repo=tmp_path)
    virt = Libvirt("qemu:///system", cluster.id)
    yield Pool(cluster, virt)
    try:  # a test that failed may leave it
        left = virt.conn.storagePoolLookupByName(name(cluster))
    except Exception:
        return
    if left.isActive():
        left.destroy()
    left.undefine()


def _marker_volume(p: Pool):
    return p.virt.conn.storagePoolLookupByName(name(p.cluster)).storageVolLookupByName(MARKER)


def _cut_short(p: Pool, slot: int, written: bytes) -> None:
    """What a write of the marker killed after `written` leaves in that slot."""
    p._upload(_marker_volume(p), slot * SLOT, written)


def test_a_marker_write_cut_short_leaves_the_marker_as_it_was(pool):
    pool.ensure()
    pool.record("a.qcow2", made_from="base.qcow2")
    before = pool.marker()
    assert set(before["volumes"]) == {"a.qcow2"}
    # The next change is written in the other slot: killed with its checksum line and a part of
    # its document written over what that slot held.
    _cut_short(pool, (before["generation"] + 1) % 2, b"0f" * 32 + b'\n{\n "checkout": ')
    assert pool.marker() == before, "the slot cut short is passed over; the other holds"
    pool.record("b.qcow2", made_from="base.qcow2")  # the next run carries on
    assert set(pool.marker()["volumes"]) == {"a.qcow2", "b.qcow2"}
    pool.remove()
    assert not pool.exists()


def test_a_first_marker_write_cut_short_is_written_anew_or_removed(pool):
    pool.ensure()
    volume = _marker_volume(pool)
    volume.wipe(0)  # as createXML made it: zeros
    _cut_short(pool, 1, b"3e" * 20)  # the first write (generation 1), killed in its checksum
    assert pool.marker() is None
    pool.remove(dryrun=True)
    assert pool.exists(), "a dry run removes nothing"
    pool.remove()  # clean: the pool had nothing but that
    assert not pool.exists()
    assert not pool.cluster.data_dir.exists() or not any(pool.cluster.data_dir.iterdir())

    pool.ensure()
    _marker_volume(pool).wipe(0)
    _cut_short(pool, 1, b"3e" * 32 + b"\n{")
    pool.ensure()  # doit: the pool's name is this cluster's, the marker dali's cut short
    assert pool.marker()["volumes"] == {}
    pool.remove()
    assert not pool.exists()


def test_a_file_of_the_markers_name_that_is_not_dalis_is_refused(pool):
    pool.ensure()
    _marker_volume(pool).wipe(0)
    _cut_short(pool, 0, b"somebody's notes")
    with pytest.raises(DaliError, match=f"holds {MARKER} that dali did not make"):
        pool.ensure()
    pool.remove()
    assert pool.exists(), "kept: no marker of this cluster, a file in it"
    assert (pool.cluster.data_dir / MARKER).read_bytes().startswith(b"somebody's notes")
