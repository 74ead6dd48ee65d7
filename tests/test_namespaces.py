"""A new FAM's namespace from the checkout's cache (dali/namespaces.py), on real files: the
info block's checksum against one a guest's kernel wrote, what is written into a FAM and what
never is, and what is kept. (That a node's kernel takes such a FAM, and that no original boots
for it, is test_two_clusters.py's, on real guests.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from dali import fam, namespaces, settings
from support.files import local_files

# Offset 4 KiB of a 1 GiB FAM after `ndctl create-namespace --reconfig=namespace0.0
# --mode=fsdax --force` in a Debian 6.1 guest (copied from a test cluster's FAM).
REAL_BLOCK = (Path(__file__).parent / "data" / "fsdax-1g-info-block.bin").read_bytes()
HEAD = 18874368  # that namespace's data offset: the device's first byte in the FAM


def head_of(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD)


def test_the_checksum_is_the_one_the_kernel_wrote():
    assert fam.checksum_holds(REAL_BLOCK)
    changed = bytearray(REAL_BLOCK)
    changed[100] ^= 1
    assert not fam.checksum_holds(bytes(changed)), "one bit off, and the kernel would refuse it"


def test_another_uuid_is_the_same_namespace_with_its_own_checksum():
    uuid = bytes(range(16))
    block = fam.with_uuid(REAL_BLOCK, uuid)
    assert fam.checksum_holds(block)
    before, after = (fam.namespace_in(b[:fam.INFO_BLOCK_SIZE], 1 << 30) for b in (REAL_BLOCK, block))
    assert after["uuid"] == "00010203-0405-0607-0809-0a0b0c0d0e0f" != before["uuid"]
    assert {**after, "uuid": None} == {**before, "uuid": None}
    assert block[:16] + block[32:-8] == REAL_BLOCK[:16] + REAL_BLOCK[32:-8], "nothing else changes"


@pytest.fixture
def made_by_an_original(config_in, files_in):
    """The FAM of config_in as an original leaves it (the real info block, a memory map after
    it), kept in the cluster's cache as namespaces.keep keeps it."""
    fam.ensure(config_in, files_in, files_in.virt)
    with open(config_in.fam_path, "r+b") as f:
        f.seek(fam.INFO_BLOCK_OFFSET)
        f.write(REAL_BLOCK)
        f.seek(1 << 20)
        f.write(b"struct pages" * 1000)
    namespaces.keep(config_in, files_in)
    return config_in


def test_an_original_s_namespace_is_kept_sparse(made_by_an_original):
    c = made_by_an_original
    head = namespaces.cached_head(c)
    assert head.parent.parent == c.cache_dir / "namespaces"
    assert head.name == f"fsdax-{1 << 30}.head"
    data = head.read_bytes()
    assert len(data) == HEAD, "up to the device's first byte"
    assert data == head_of(c.fam_path)
    assert head.stat().st_blocks * 512 <= 64 << 10, "only the blocks that hold something"
    assert [p.name for p in head.parent.iterdir()] == [head.name], "no work left behind"


def test_a_new_fam_gets_it_with_a_uuid_of_its_own(made_by_an_original, data_dir):
    other = settings.load(env={"DALI_DIR": str(data_dir.with_name("other")), "DALI_TAG": "other"},
                          repo=made_by_an_original.state_dir.parent.parent)
    files = local_files(other)
    fam.ensure(other, files, files.virt)
    assert not namespaces.nothing_to_give(other, files, files.virt)
    namespaces.give(other, files, files.virt)
    mine, theirs = fam.namespace(other.fam_path), fam.namespace(made_by_an_original.fam_path)
    assert mine["mode"] == "fsdax" and mine["uuid"] != theirs["uuid"]
    assert {**mine, "uuid": None} == {**theirs, "uuid": None}
    head = head_of(other.fam_path)
    assert fam.checksum_holds(head[4096:8192])
    assert head[1 << 20:(1 << 20) + 12] == b"struct pages", "the rest of the head, byte for byte"
    assert namespaces.nothing_to_give(other, files, files.virt), "once is enough: the FAM is prepared"


def test_a_fam_holding_a_namespace_is_never_written(made_by_an_original, files_in):
    c = made_by_an_original
    before = head_of(c.fam_path)
    assert namespaces.nothing_to_give(c, files_in, files_in.virt)
    namespaces.give(c, files_in, files_in.virt)
    assert head_of(c.fam_path) == before


def test_nothing_is_given_where_the_original_is_asked_to_make_it(made_by_an_original, data_dir):
    for extra, env in (('[device]\nnamespace_from = "original"', {}),
                       ('[device]\nmode = "devdax"', {}),   # no devdax namespace kept
                       ('[fam]\nsize = "2G"', {})):         # none of that size
        path = data_dir.parent / "cluster.toml"
        path.write_text(extra + "\n")
        other = settings.load(path, env={"DALI_DIR": str(data_dir.with_name("other")), "DALI_TAG": "other", **env},
                              repo=made_by_an_original.state_dir.parent.parent)
        files = local_files(other)
        other.data_dir.mkdir(parents=True, exist_ok=True)
        with open(other.fam_path, "wb") as f:
            f.truncate(other.fam_size)
        assert namespaces.nothing_to_give(other, files, files.virt), extra
        other.fam_path.unlink()


def test_nothing_is_written_under_a_running_node(made_by_an_original, data_dir):
    """A node running on the raw FAM (an original a killed run left booting): its kernel has the
    device, and the original's own path makes the namespace (original:boot finds it running)."""
    other = settings.load(env={"DALI_DIR": str(data_dir.with_name("other")), "DALI_TAG": "other"},
                          repo=made_by_an_original.state_dir.parent.parent)
    files = local_files(other)
    fam.ensure(other, files, files.virt)
    dom = files.virt.conn.createXML(
        f"<domain type='test'><name>othera</name><memory>1024</memory><os><type>hvm</type></os>"
        f"<devices><disk type='file' device='disk'><source file='{other.fam_path}'/>"
        f"<target dev='vdb'/></disk></devices></domain>")
    try:
        assert namespaces.nothing_to_give(other, files, files.virt)
        namespaces.give(other, files, files.virt)
        assert fam.namespace(other.fam_path)["mode"] == "raw"
    finally:
        dom.destroy()
    assert not namespaces.nothing_to_give(other, files, files.virt), "given once it is off"


def test_a_kept_head_cut_short_or_changed_is_passed_over(made_by_an_original, data_dir):
    """The original then makes the namespace, as with nothing kept."""
    other = settings.load(env={"DALI_DIR": str(data_dir.with_name("other")), "DALI_TAG": "other"},
                          repo=made_by_an_original.state_dir.parent.parent)
    files = local_files(other)
    fam.ensure(other, files, files.virt)
    head = namespaces.cached_head(other)
    whole = head.read_bytes()
    head.write_bytes(whole[:HEAD // 2])
    assert namespaces.nothing_to_give(other, files, files.virt), "cut short"
    head.write_bytes(whole[:5000] + b"x" + whole[5001:])
    assert namespaces.nothing_to_give(other, files, files.virt), "its info block changed"
    head.write_bytes(whole)
    assert not namespaces.nothing_to_give(other, files, files.virt)
