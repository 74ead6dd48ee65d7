"""The cluster's files on a remote libvirt host: volumes of one storage pool, made, read,
written and deleted through libvirt's API only (docs/remote.md). LibvirtPool, at the end, is
the Storage (dali/storage/) of such a cluster; Pool beneath it speaks to the pool.

On this machine the FAM and the disks are files dali writes itself (dali/storage/local.py).
With a uri naming another host (or a daemon's own socket) the same files live in a directory pool at the
cluster's `dir` on that host, named dali-<tag>-<first 8 of the cluster id>. Nothing is written
there but by libvirtd: the FAM is a volume created fully allocated, the disks are qcow2 volumes
(overlays name their backing volume), what dali builds here (the image, the identity disks) is
uploaded with virStorageVolUpload, and what dali reads (the FAM's info block, a console log)
is downloaded with virStorageVolDownload.

Marks. A pool and its volumes have no <metadata> to carry dali's mark, so the pool holds one
small volume of its own, MARKER: a JSON document with the cluster's mark (its id, tag,
checkout and dir) and the names of the volumes dali made there, each with what it was made
from. A volume is ours when the pool is ours (its marker names this cluster's id) and the
marker lists it; clean deletes nothing else, and the directory only if dali made it. A name is
listed *before* its volume is made, so a run killed in between leaves a listed name with no
volume (harmless: deleting it finds nothing), never a volume nobody knows.

The marker is rewritten whole at each change, and a run can be killed in the middle of an
upload. So it has two slots, written in turn: each holds a generation number and a checksum,
and the newest slot whose checksum holds is the marker. A write cut short spoils only the slot
it was writing; the other still holds the marker as it was before that change, which is what
the pool holds (the change the write was for has not been made yet).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import libvirt

from dali import cleaning
from dali.cluster import Cluster
from dali.errors import DaliError
from dali.render import render
from dali.reporter import log
from dali.storage.base import Storage
from dali.virt import Libvirt, unless_gone

MARKER = ".dali-cluster.json"
MARKER_SIZE = 64 * 1024  # fixed: an upload overwrites bytes, it never shortens a volume
SLOT = MARKER_SIZE // 2  # two slots: the marker's generation N is written in slot N % 2
_ZEROS = bytes(1 << 20)
CHUNK = 1 << 20


def name(cluster: Cluster) -> str:
    return f"dali-{cluster.tag}-{cluster.id[:8]}"


def volume_name(cluster: Cluster, path: Path) -> str:
    """The volume of one of the cluster's paths: a file of its data directory."""
    if path.parent != cluster.data_dir:
        raise DaliError(f"{path} is not in {cluster.data_dir}, the cluster's pool on {cluster.uri}")
    return path.name


class Pool:
    """The cluster's storage pool on the libvirt host of `virt`."""

    def __init__(self, cluster: Cluster, virt: Libvirt):
        self.cluster, self.virt = cluster, virt

    # --- the pool -------------------------------------------------------------------------------

    def _lookup(self) -> libvirt.virStoragePool | None:
        return unless_gone(lambda: self.virt.conn.storagePoolLookupByName(name(self.cluster)),
                           libvirt.VIR_ERR_NO_STORAGE_POOL, default=None)

    def _target(self, pool: libvirt.virStoragePool) -> str:
        return ET.fromstring(pool.XMLDesc(0)).findtext("target/path", "")

    def exists(self) -> bool:
        return self._lookup() is not None

    def is_empty(self) -> bool:
        """No file at all in the pool's directory (one a run killed as it made the pool left)."""
        pool = self._active()
        if pool is None:
            return True
        return self._refresh(pool) and not pool.listVolumes()

    def problem(self) -> str | None:
        """Before anything is made: why the pool could not be made at dir, or None. A pool not
        defined yet is tried as a transient one, started and stopped again (nothing in the
        directory is touched): a directory that holds files, or that another pool has, is
        refused here, before the network or anything else of the cluster exists."""
        c = self.cluster
        if self.exists():
            return None  # checked when it was made; its marker is checked by every use
        trial_name = f"{name(c)}-check"
        # A trial left running by a run killed right after starting it: a transient pool of our
        # name at our directory, stopped (which makes it vanish, its directory as it was).
        left = unless_gone(lambda: self.virt.conn.storagePoolLookupByName(trial_name),
                           libvirt.VIR_ERR_NO_STORAGE_POOL, default=None)
        if left is not None and not left.isPersistent() and self._target(left) == str(c.data_dir):
            left.destroy()
        try:
            trial = self.virt.conn.storagePoolCreateXML(render("pool.xml.j2", name=trial_name, path=c.data_dir), 0)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR and "No such file" in e.get_error_message():
                return None  # not there yet: libvirt makes it with the pool
            # Another pool has that directory ("Storage source conflict"), or it cannot be read.
            return f"dir (DALI_DIR) {c.data_dir} on {c.uri}: {e.get_error_message()}: pick another dir"
        try:
            shared = _shared_directory(trial, c)
            if shared:
                return shared
            found = trial.listVolumes()
            if MARKER in found and self._read_marker(trial) is not None:
                found = []  # ours, the pool undefined meanwhile (virsh pool-undefine): made again
        finally:
            trial.destroy()  # a transient pool is gone once stopped; its directory stays as it was
        if found:
            return (f"dir (DALI_DIR) {c.data_dir} on {c.uri} holds {', '.join(sorted(found)[:3])} "
                    "that dali did not make for this cluster: pick another dir")
        return None

    def shared_directory(self) -> str | None:
        """Why the pool's directory is unsafe (see _shared_directory), or None."""
        pool = self._active()
        return None if pool is None else _shared_directory(pool, self.cluster)

    def _active(self) -> libvirt.virStoragePool | None:
        """The pool, started, if it exists."""
        pool = self._lookup()
        if pool is None:
            return None
        if not pool.isActive():
            pool.create(0)
        return pool

    @staticmethod
    def _refresh(pool: libvirt.virStoragePool) -> bool:
        """Ask libvirt to list the directory again; False if it refused: it does while a
        transfer on the pool runs (another thread's, or another doit's)."""
        try:
            pool.refresh(0)
            return True
        except libvirt.libvirtError:
            return False

    @staticmethod
    def _find(pool: libvirt.virStoragePool, vol_name: str) -> libvirt.virStorageVol | None:
        """The volume of that name. libvirt lists a file it did not make (a console log, a
        memory dump) only after a refresh, which is asked for only then; one refused (_refresh)
        takes the file as not there yet. A volume's size is read anew on every info()."""
        def lookup():
            return unless_gone(lambda: pool.storageVolLookupByName(vol_name),
                               libvirt.VIR_ERR_NO_STORAGE_VOL, default=None)
        vol = lookup()
        if vol is None and Pool._refresh(pool):
            vol = lookup()
        return vol

    def ensure(self) -> None:
        """The pool, defined, started and autostarted, with our marker; its directory made by
        libvirt if it is not there. A directory that exists and holds anything dali did not
        make for this cluster is refused, and the pool defined for it undefined again."""
        c = self.cluster
        pool = self._lookup()
        if pool is not None and self._target(pool) != str(c.data_dir):
            raise DaliError(f"storage pool {name(c)} on {c.uri} has target {self._target(pool)}, not "
                            f"dir {c.data_dir}: remove that pool (virsh pool-undefine), or set dir to it")
        made_now = pool is None
        if made_now:
            pool = self.virt.conn.storagePoolDefineXML(render("pool.xml.j2", name=name(c), path=c.data_dir), 0)
        built = False
        try:
            if not pool.isActive():
                try:
                    pool.create(0)
                except libvirt.libvirtError:
                    # The directory is not there: libvirt makes it (mode 0711, root's), and
                    # clean removes it again once empty.
                    pool.build(0)
                    built = True
                    pool.create(0)
            pool.setAutostart(1)
            self._refresh(pool)
            marker = self.marker(pool)
            if marker is None:
                strangers = [v for v in pool.listVolumes() if v != MARKER]
                # A marker with no slot that holds is a first write cut short, in our pool (the
                # pool's name carries this cluster's id): written anew. One that holds is
                # another cluster's.
                if strangers or (MARKER in pool.listVolumes() and not self._spoilt_marker(pool)):
                    raise DaliError(f"dir {c.data_dir} on {c.uri} holds {', '.join(sorted(strangers)[:3]) or MARKER} "
                                    "that dali did not make for this cluster: pick another dir")
                self._write_marker(pool, {**c.mark, "made_dir": built, "volumes": {}})
                log(f"storage pool {name(c)} on {c.uri}: {c.data_dir}")
        except BaseException:
            if made_now:
                self._undo(pool, built)
            raise

    def _undo(self, pool: libvirt.virStoragePool, built: bool) -> None:
        """Take back a pool defined this run for a directory that was refused."""
        try:
            if pool.isActive():
                pool.destroy()
            if built:
                pool.delete(0)  # rmdir: only the empty directory libvirt made
            pool.undefine()
        except libvirt.libvirtError:
            pass

    # --- the marker -----------------------------------------------------------------------------

    def marker(self, pool: libvirt.virStoragePool | None = None) -> dict | None:
        """The marker of our cluster, or None if the pool has none (or another cluster's). The
        uptodate checks of one doit share one reading until an action starts (as they share one
        listing of the domains: dali/steps.py Checking); an action reads it anew."""
        return self.virt.shared_by_checks(("marker", name(self.cluster)), lambda: self._read_marker(pool))

    def _read_marker(self, pool: libvirt.virStoragePool | None) -> dict | None:
        pool = pool or self._active()
        if pool is None:
            return None
        vol = self._find(pool, MARKER)
        found = _newest_slot(self._download(vol, 0, MARKER_SIZE)) if vol is not None else None
        return found if found is not None and found.get("id") == self.cluster.id else None

    def _spoilt_marker(self, pool: libvirt.virStoragePool) -> libvirt.virStorageVol | None:
        """The marker volume, if its first write was cut short: no slot holds, and each is
        empty or begins as dali's writes do. Anything else there is not dali's to overwrite."""
        vol = self._find(pool, MARKER)
        if vol is None:
            return None
        data = self._download(vol, 0, MARKER_SIZE)
        if _newest_slot(data) is None and all(_CUT_SHORT.match(s) for s in (data[:SLOT], data[SLOT:])):
            return vol
        return None

    def _write_marker(self, pool: libvirt.virStoragePool, marker: dict) -> None:
        """Write the marker as its next generation, in the slot that does not hold the current one."""
        marker = {**marker, "generation": marker.get("generation", 0) + 1}
        body = json.dumps(marker, indent=1, sort_keys=True).encode()
        slot = hashlib.sha256(body).hexdigest().encode() + b"\n" + body
        if len(slot) > SLOT:
            raise DaliError(f"the marker of pool {name(self.cluster)} outgrew {SLOT} bytes")
        vol = unless_gone(lambda: pool.storageVolLookupByName(MARKER), libvirt.VIR_ERR_NO_STORAGE_VOL,
                          default=None)
        if vol is None:
            vol = pool.createXML(_volume_xml(MARKER, MARKER_SIZE, "raw", mode="0600"), 0)
        self._upload(vol, marker["generation"] % 2 * SLOT, slot.ljust(SLOT, b" "))

    def _listing(self, names: list[str], add: bool, fresh: bool = False, **facts) -> None:
        """Names added to the marker (with facts; `fresh`: a volume made anew, whose old facts
        are gone with the old volume) or taken out of it."""
        pool = self._active()
        marker = self.marker(pool)
        if marker is None:
            raise DaliError(f"storage pool {name(self.cluster)} on {self.cluster.uri} has no marker of "
                            "this cluster: run doit, which makes it")
        for n in names:
            if add:
                marker["volumes"][n] = {**({} if fresh else marker["volumes"].get(n, {})), **facts}
            else:
                marker["volumes"].pop(n, None)
        self._write_marker(pool, marker)

    # --- volumes ----------------------------------------------------------------------------------

    def _ours(self, vol_name: str) -> tuple[libvirt.virStorageVol | None, dict | None]:
        """Our volume of that name and the marker that lists it; (None, None) if there is no
        such volume; refused if it is not ours."""
        pool = self._active()
        vol = None if pool is None else self._find(pool, vol_name)
        if vol is None:
            return None, None
        marker = self.marker(pool)
        if marker is None or vol_name not in marker["volumes"]:
            raise DaliError(f"{self.cluster.data_dir / vol_name} on {self.cluster.uri} exists but dali "
                            "did not make it for this cluster: move it away, then run doit again")
        return vol, marker

    def volume(self, vol_name: str) -> libvirt.virStorageVol | None:
        """Our volume of that name; None if there is none; refused if it is not ours."""
        return self._ours(vol_name)[0]

    def _must(self, vol_name: str) -> libvirt.virStorageVol:
        vol = self.volume(vol_name)
        if vol is None:
            raise DaliError(f"{self.cluster.data_dir / vol_name} is not on {self.cluster.uri}")
        return vol

    def facts(self, vol_name: str) -> dict | None:
        """What the marker says about our volume (its stamp), if the volume is there."""
        vol, marker = self._ours(vol_name)
        return None if vol is None else marker["volumes"][vol_name]

    def record(self, vol_name: str, **facts) -> None:
        """Write facts about a volume (what it was made from) into the marker."""
        self._listing([vol_name], True, **facts)

    def create(self, vol_name: str, capacity: int, fmt: str = "raw", *, allocation: int = 0,
               backing: Path | None = None, mode: str = "0600", filled_later: bool = False) -> libvirt.virStorageVol:
        """A new volume: listed in the marker first, then made by libvirt. A raw volume with
        allocation = capacity is fully allocated on the host, as fallocate does. filled_later:
        its bytes are uploaded next, so it is listed as not complete until record(complete=True)."""
        # `made`: what tells this volume from one made later under the same name (identity()).
        self._listing([vol_name], True, fresh=True, made=secrets.token_hex(8),
                      **({"complete": False} if filled_later else {}))
        pool = self._active()
        return pool.createXML(_volume_xml(vol_name, capacity, fmt, allocation=allocation,
                                          backing=backing, mode=mode), 0)

    def copy(self, vol_name: str, source: str, fmt: str = "qcow2") -> libvirt.virStorageVol:
        """A standalone copy of our volume `source` (a qcow2 chain comes out flattened)."""
        self._listing([vol_name], True, fresh=True, made=secrets.token_hex(8))
        pool = self._active()
        src = self.volume(source)
        capacity = src.info()[1]
        return pool.createXMLFrom(_volume_xml(vol_name, capacity, fmt), src, 0)

    def upload(self, vol_name: str, local: Path | bytes, **facts) -> None:
        """A volume with the bytes of the local file `local` (or those bytes), replacing ours of
        that name; the facts (what it was built from) are recorded once every byte is there.
        A domain that has the old one open keeps reading it (as after a rename over a file)
        and boots on the new one next time."""
        old = self.volume(vol_name)
        if old is not None:
            old.delete(0)
        if isinstance(local, bytes):
            self._upload(self.create(vol_name, len(local), "raw", filled_later=True), 0, local)
        else:
            size = local.stat().st_size
            vol = self.create(vol_name, size, "raw", filled_later=True)
            with open(local, "rb") as f:
                stream = self.virt.conn.newStream(0)
                vol.upload(stream, 0, size, 0)
                stream.sendAll(lambda _s, n, _f: f.read(min(n, CHUNK)), None)
                stream.finish()
        self.record(vol_name, complete=True, **facts)

    def read(self, vol_name: str, offset: int, length: int) -> bytes:
        vol = self._must(vol_name)
        return self._download(vol, offset, length)

    def nonzero_mib(self, vol_name: str, start: int) -> int:
        """How many MiB of the volume from `start` hold anything but zeros, read in one stream
        and never kept whole. A sparse stream (holes arrive as lengths, not bytes) took half the
        time of a plain one for a 1 GiB FAM with no hole at all (3.0 s against 6.9 s here)."""
        vol = self._must(vol_name)
        mib = 1 << 20
        at, found = [start], set()

        def data(_s, chunk: bytes, _o) -> int:
            view, pos = memoryview(chunk), 0
            while pos < len(chunk):
                n = min(len(chunk) - pos, mib - at[0] % mib)
                if view[pos:pos + n] != _ZEROS[:n]:
                    found.add(at[0] // mib)
                pos += n
                at[0] += n
            return 0

        def hole(_s, length: int, _o) -> int:
            at[0] += length
            return 0

        stream = self.virt.conn.newStream(0)
        vol.download(stream, start, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        stream.sparseRecvAll(data, hole, None)
        stream.finish()
        return len(found)

    def download(self, vol_name: str, local: Path) -> None:
        """The whole volume into the local file `local` (made 0600: a memory dump holds keys)."""
        vol = self._must(vol_name)
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            stream = self.virt.conn.newStream(0)
            vol.download(stream, 0, 0, 0)  # length 0: to the end
            stream.recvAll(lambda _s, data, _o: f.write(data) and 0, None)
            stream.finish()

    def write(self, vol_name: str, offset: int, data: bytes) -> None:
        """Overwrite bytes of our volume in place (the FAM: every node maps it shared and sees
        the write at once, as a write to the file on the host would be seen)."""
        vol = self._must(vol_name)
        self._upload(vol, offset, data)

    def available(self) -> int:
        """Bytes free in the pool's filesystem on the libvirt host."""
        pool = self._active()
        return pool.info()[3] if pool is not None else 0

    def size(self, vol_name: str) -> int | None:
        vol = self.volume(vol_name)
        return None if vol is None else vol.info()[1]

    def built_on(self, path: Path) -> tuple[list[str], list[str]]:
        """The volumes of the pool whose qcow2 is built on `path`: (ours, everyone else's). A
        user's copy of a linked clone (cp ivpb.qcow2 keep.qcow2 on the host) needs
        frozen.qcow2 as much as the clone did."""
        pool = self._active()
        if pool is None:
            return [], []
        listed = (self.marker(pool) or {}).get("volumes", {})
        on_it = [v for v, b in self._backings(pool).items() if b == str(path)]
        return [v for v in on_it if v in listed], [v for v in on_it if v not in listed]

    def _backings(self, pool: libvirt.virStoragePool) -> dict[str, str]:
        """{volume: the path its qcow2 is built on} for every file in the pool, dali's or not."""
        self._refresh(pool)  # files libvirt did not make too
        found = {}
        for v in pool.listVolumes():
            vol = unless_gone(lambda: pool.storageVolLookupByName(v), libvirt.VIR_ERR_NO_STORAGE_VOL,
                              default=None)
            backing = vol and ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path")
            if backing:
                found[v] = backing
        return found

    def backing(self, vol_name: str) -> str | None:
        """The path the qcow2 volume is built on, as libvirt reads it from its header."""
        vol = self.volume(vol_name)
        if vol is None:
            return None
        return ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path")

    def delete(self, vol_name: str, dryrun: bool = False, *, remade: bool = False) -> None:
        """Delete our volume, if it is there (someone else's is refused by volume()), and its
        name from the marker. `remade`: it is made again at once under the same name (the
        frozen original's disk), so the domains naming it are no reason to keep it."""
        vol = self.volume(vol_name)
        if vol is not None:
            if dryrun:
                cleaning.said("file", f"{self.cluster.data_dir / vol_name} on {self.cluster.uri}", True)
                return
            users = [] if remade else self.virt.domains_using(vol.path())
            if users:
                raise DaliError(f"{vol.path()} on {self.cluster.uri} is still used by domain "
                                f"{', '.join(users)}: undefine it first (doit clean does that)")
            vol.delete(0)
            if not remade:
                cleaning.said("file", f"{self.cluster.data_dir / vol_name} on {self.cluster.uri}", False)
        if not dryrun and self._lookup() is not None and self.marker() is not None:
            self._listing([vol_name], False)

    def remove(self, dryrun: bool = False) -> None:
        """The last of clean: once none of our volumes is left, the marker, the pool, and the
        directory if libvirt made it for us. A pool holding anything else stays, and says so."""
        c = self.cluster
        pool = self._active()
        if pool is None:
            return
        marker = self.marker(pool)
        what = f"{c.data_dir} on {c.uri}"
        spoilt = self._spoilt_marker(pool) if marker is None else None
        if marker is None and self._target(pool) == str(c.data_dir) and \
                (self.is_empty() or (spoilt is not None and pool.listVolumes() == [MARKER])):
            # Our name (it carries the cluster's id) and no file in it, or only a marker whose
            # first write was cut short: a run killed as it made the pool, or as clean removed
            # it. Undefined; the directory is left.
            if not dryrun:
                if spoilt is not None:
                    spoilt.delete(0)
                pool.destroy()
                pool.undefine()
            cleaning.said("storage pool", f"{name(c)} ({what})", dryrun)
            return
        if marker is None:
            cleaning.kept(what, f"storage pool {name(c)} has no marker of this cluster", dryrun)
            return
        # A volume goes once nothing is built on it, ours first; one that someone else's is built
        # on stays, and so does what it is built on.
        left = sorted(marker["volumes"])
        while left:
            backings = self._backings(pool)
            needed = {b for v, b in backings.items() if v in left or v not in marker["volumes"]}
            free = [v for v in left if str(c.data_dir / v) not in needed]
            for v in free:
                self.delete(v, dryrun)
            left = [v for v in left if v not in free]  # (with -n: as if they were gone)
            if not free:
                break
        for v in left:
            theirs = [o for o, b in backings.items() if b == str(c.data_dir / v) and o not in marker["volumes"]]
            if theirs:
                cleaning.kept(f"{c.data_dir / v} on {c.uri}", f"{', '.join(theirs)} is built on it", dryrun)
        if left:
            cleaning.kept(what, "it holds what dali keeps, said above", dryrun)
            return  # what is kept keeps the marker and the pool
        if not self._refresh(pool):  # every file there, also those libvirt did not make
            raise DaliError(f"storage pool {name(c)} on {c.uri} is busy (a transfer runs): run doit clean again")
        others = [v for v in pool.listVolumes() if v != MARKER and v not in marker["volumes"]]
        if others:
            cleaning.kept(what, f"it holds {', '.join(sorted(others)[:3])}, which dali did not make", dryrun)
            return
        if not dryrun:
            pool.storageVolLookupByName(MARKER).delete(0)
            pool.destroy()
            if marker.get("made_dir"):
                pool.delete(0)
            pool.undefine()
        cleaning.said("storage pool", f"{name(c)} ({what})", dryrun)

    # --- streams ----------------------------------------------------------------------------------

    def _download(self, vol: libvirt.virStorageVol, offset: int, length: int) -> bytes:
        stream = self.virt.conn.newStream(0)
        vol.download(stream, offset, length, 0)
        chunks = []
        stream.recvAll(lambda _s, data, _o: chunks.append(data) or 0, None)
        stream.finish()
        return b"".join(chunks)

    def _upload(self, vol: libvirt.virStorageVol, offset: int, data: bytes) -> None:
        stream = self.virt.conn.newStream(0)
        vol.upload(stream, offset, len(data), 0)
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            sent += stream.send(bytes(view[sent:sent + CHUNK]))
        stream.finish()


def _shared_directory(pool: libvirt.virStoragePool, c: Cluster) -> str | None:
    """The pool's directory, as libvirt reads it on its host: one that is not root's, or that a
    group or others may write, is refused, as dir is on this machine (dali/storage/local.py):
    another user of that host could swap the cluster's files for links that libvirtd (root)
    follows. (Only the directory itself: libvirt says nothing of the ones on the way to it.)"""
    perms = ET.fromstring(pool.XMLDesc(0)).find("target/permissions")
    if perms is None:
        return None
    owner, group, mode = perms.findtext("owner", "0"), perms.findtext("group", "0"), perms.findtext("mode", "0")
    writable = int(mode, 8) & (0o002 | (0o020 if group != "0" else 0))
    if owner != "0" or writable:
        return (f"dir (DALI_DIR) {c.data_dir} on {c.uri} is owned by uid {owner}, mode {mode}: users "
                f"other than root there could change dali's files: chown root and chmod go-w it on "
                "that host, or pick another dir")
    return None


def _newest_slot(data: bytes) -> dict | None:
    """The marker of the newest slot whose checksum holds; None if neither does (the first
    write of the marker cut short, or a file that is not dali's marker)."""
    newest = None
    for slot in (data[:SLOT], data[SLOT:]):
        checksum, _, body = slot.partition(b"\n")
        body = body.rstrip(b" \0")
        if hashlib.sha256(body).hexdigest().encode() != checksum:
            continue  # never written, or a write cut short
        marker = json.loads(body)
        if newest is None or marker["generation"] > newest["generation"]:
            newest = marker
    return newest


# A slot as a cut-short write leaves it in a new marker volume (created zero-filled): nothing, or
# a part of the checksum line then zeros, or the whole line and a part of the document.
_CUT_SHORT = re.compile(rb"\0*\Z|[0-9a-f]{1,63}\0*\Z|[0-9a-f]{64}\n")


def _volume_xml(vol_name: str, capacity: int, fmt: str, *, allocation: int = 0,
                backing: Path | None = None, mode: str = "0600") -> str:
    return render("volume.xml.j2", name=vol_name, capacity=capacity, allocation=allocation,
                  format=fmt, mode=mode, backing=backing)


# --- the cluster's files as volumes of its pool: the Storage of a remote libvirt host -----------

class LibvirtPool(Storage):
    """The Storage of a cluster whose libvirtd is reached through its API only (dali/storage/):
    every file a volume of the cluster's pool (Pool above), named by its path in `dir`."""

    def __init__(self, cluster: Cluster, virt: Libvirt):
        super().__init__(cluster, virt)
        self.pool = Pool(cluster, virt)
        self.where = f" on {cluster.uri}"

    # A pool's volumes are the files of one directory: the image and your kernel sit in it too.
    @property
    def image_dir(self) -> Path:
        return self.cluster.data_dir

    @property
    def kernel_dir(self) -> Path:
        return self.cluster.data_dir

    def console_log(self, node) -> Path:
        """In the pool, where dali reads it back as a volume (virtlogd writes it there)."""
        return self.cluster.data_dir / f"{getattr(node, 'name', node)}-console.log"

    def _name(self, path: Path) -> str:
        return volume_name(self.cluster, path)

    # --- the place itself ---------------------------------------------------------------------

    def problem(self) -> str | None:
        """Its pool, if there is one, is ours and has room for the FAM; one not made yet is
        tried (Pool.problem). The directory must be root's and writable by nobody else."""
        c, found = self.cluster, self.pool
        if not found.exists():
            return found.problem()
        try:
            if found.marker() is None and not found.is_empty():
                return (f"dir (DALI_DIR): storage pool {name(c)} on {c.uri} has no marker of "
                        "this cluster: remove that pool (virsh pool-undefine), or pick another tag")
            shared = found.shared_directory()
            if shared:
                return shared
            if not self.exists(c.fam_path):
                free = found.available()
                if c.fam_size > free:
                    return (f"fam.size: {c.fam_size} bytes do not fit in the {free} bytes free in "
                            f"{c.data_dir} on {c.uri}: lower fam.size, free space there, or set "
                            "dir (DALI_DIR) elsewhere")
        except DaliError as e:
            return str(e)
        return None

    def prepare(self) -> None:
        self.pool.ensure()

    def bytes_free(self) -> int:
        return self.pool.available()

    # --- facts --------------------------------------------------------------------------------

    def exists(self, path: Path) -> bool:
        pool = self.pool._active()
        return pool is not None and self.pool._find(pool, self._name(path)) is not None

    def is_ours(self, path: Path) -> bool:
        try:
            return self.pool.volume(self._name(path)) is not None
        except DaliError:
            return False

    def have(self, path: Path) -> bool:
        return self.pool.volume(self._name(path)) is not None  # refused there if not ours

    def identity(self, path: Path) -> str:
        return f"made {self.fact(path, 'made')}"

    def complete(self, path: Path) -> bool:
        facts = self.pool.facts(self._name(path))
        return facts is not None and facts.get("complete", True)  # (listed before 'complete' was kept)

    def size(self, path: Path) -> int | None:
        return self.pool.size(self._name(path))

    def allocated(self, path: Path) -> int:
        vol = self.pool.volume(self._name(path))
        return 0 if vol is None else vol.info()[2]

    def fact(self, path: Path, key: str) -> str | None:
        return (self.pool.facts(self._name(path)) or {}).get(key)

    def backing(self, path: Path) -> str | None:
        return self.pool.backing(self._name(path))

    def built_on(self, path: Path) -> tuple[list[Path], list[Path]]:
        ours, theirs = self.pool.built_on(path)
        return [self.cluster.data_dir / v for v in ours], [self.cluster.data_dir / v for v in theirs]

    def our_files(self) -> list[Path]:
        listed = (self.pool.marker() or {}).get("volumes", {})
        return [self.cluster.data_dir / v for v in sorted(listed)]

    # --- bytes --------------------------------------------------------------------------------

    def read(self, path: Path, offset: int, length: int) -> bytes:
        return self.pool.read(self._name(path), offset, length)

    def write(self, path: Path, pieces: dict[int, bytes]) -> None:
        for offset, data in pieces.items():
            self.pool.write(self._name(path), offset, data)

    def nonzero_mib(self, path: Path, start: int) -> int:
        return self.pool.nonzero_mib(self._name(path), start)

    def zero(self, path: Path, start: int) -> None:
        """virStorageVolWipe: zeros written by the libvirt host, not sent from here. It wipes
        the whole volume: the caller writes back what lay below `start`."""
        self.pool._must(self._name(path)).wipe(0)

    # --- making -------------------------------------------------------------------------------

    def allocate(self, path: Path, size: int, *, for_qemu: bool) -> None:
        # mode 0660: qemu's user gets the file from libvirt itself, which labels a <memory
        # model='nvdimm'> or <disk> source for the domain that uses it: no group to set here.
        self.pool.ensure()
        self.pool.create(self._name(path), size, "raw", allocation=size, mode="0660")

    def qemu_may_use(self, path: Path) -> bool:
        return True  # libvirt labels what a domain uses

    def let_qemu_use(self, path: Path) -> None:
        pass

    def put(self, path: Path, data: Path | bytes, **facts: str) -> None:
        self.pool.ensure()
        self.pool.upload(self._name(path), data, **facts)

    def map_shared(self, path: Path, size: int, head: bytes) -> None:
        # The settings refuse device.coherence with a remote uri before anything runs.
        raise DaliError(f"{path}{self.where}: a file qemu maps from every node (device.coherence) "
                        "is made only on this machine; set device.coherence = \"off\"")

    def put_sparse(self, path: Path, size: int, head_of: Path, length: int) -> None:
        vol_name = self._name(path)
        self.pool.ensure()
        self.pool.delete(vol_name)
        self.pool.create(vol_name, size, "raw", filled_later=True)
        self.copy_head(head_of, path, length)
        self.pool.record(vol_name, complete=True)

    def copy_head(self, source: Path, target: Path, length: int) -> None:
        """Read there and written back, 16 MiB at a time."""
        step = CHUNK * 16
        for offset in range(0, length, step):
            self.pool.write(self._name(target), offset, self.read(source, offset, min(step, length - offset)))

    def overlay(self, path: Path, backing: Path, size: int) -> None:
        self.pool.ensure()
        self.pool.create(self._name(path), size, "qcow2", backing=backing)

    def copy(self, path: Path, source: Path) -> None:
        self.pool.ensure()
        self.pool.copy(self._name(path), self._name(source))

    def move(self, source: Path, target: Path) -> None:
        """A volume cannot be renamed: `target` is made a copy of `source`, written down as
        complete, then `source` is deleted. Each step is decided from what the pool holds:
        a complete target means only the deletion may be left to do; an incomplete one is a
        copy cut short, made again (nothing can be built on it yet)."""
        src, dst = self._name(source), self._name(target)
        if not self.complete(target):
            if self.pool.volume(dst) is not None:
                ours, theirs = self.pool.built_on(target)
                if ours or theirs:
                    raise DaliError(f"{target}{self.where} has disks built on it ({', '.join(ours + theirs)}) "
                                    f"but is not complete: move them away, then run doit again")
                self.pool.delete(dst)
            if self.pool.volume(src) is None:
                raise DaliError(f"{source}{self.where} is not there to make {target.name} of: run doit")
            self.pool.copy(dst, src)
            self.pool.record(dst, complete=True)
        if self.pool.volume(src) is not None:
            self.pool.delete(src, remade=True)

    def expect(self, path: Path) -> None:
        self.pool.record(self._name(path))  # listed before libvirtd makes it: clean takes it

    def dump_memory(self, dom, local: Path) -> None:
        """Written by libvirtd in the pool, brought here, deleted there."""
        there = self.cluster.data_dir / f".dump-{dom.name()}.kdump"
        partial = local.with_name(local.name + ".partial")
        self.pool.delete(there.name)  # one a killed run left
        self.expect(there)
        dom.coreDumpWithFormat(str(there), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB,
                               libvirt.VIR_DUMP_MEMORY_ONLY)
        self.pool.download(there.name, partial)
        self.pool.delete(there.name, remade=True)
        partial.rename(local)

    @contextmanager
    def fetch(self, path: Path, offset: int, length: int):
        with tempfile.NamedTemporaryFile(prefix=".dali-fetch-", dir=self.cluster.state_dir) as f:
            f.write(self.read(path, offset, length))
            f.flush()
            yield Path(f.name)

    # --- snapshots: not kept in a pool (docs/snapshots.md, "A remote host") -----------------------

    def snapshot_problem(self) -> str | None:
        return (f"snapshots are kept beside the FAM and the disks, and this cluster's are volumes of a "
                f"storage pool{self.where}, reached only through libvirt: dali keeps no snapshot "
                "there (a cluster on this machine's libvirtd has them)")

    @property
    def snapshots_dir(self) -> Path:
        return self.cluster.data_dir / "snapshots"

    def folders(self, path: Path) -> list[Path]:
        return []  # a pool is one flat directory: no snapshot was ever kept in one

    def _no_snapshots(self, *_args, **_kwargs):
        raise DaliError(self.snapshot_problem())

    make_folder = remove_folder = clone_file = copy_into = save_memory = _no_snapshots

    # --- deleting -----------------------------------------------------------------------------

    def remove(self, path: Path, dryrun: bool = False) -> None:
        """Our volume, unless something is built on it (as LocalDir.remove)."""
        pool = self.pool
        if not pool.exists():
            return
        vol_name = self._name(path)
        where = f"{path}{self.where}"
        try:
            vol = pool.volume(vol_name)
        except DaliError:
            cleaning.kept(where, "dali did not make it for this cluster", dryrun)
            return
        if vol is not None:
            ours, theirs = pool.built_on(path)
            if theirs:
                cleaning.kept(where, f"{', '.join(theirs)} is built on it", dryrun)
                return
            if ours and not dryrun:
                return  # our disks on it go first; the pool's removal at the end takes it then
        pool.delete(vol_name, dryrun)

    def discard(self, path: Path) -> None:
        self.pool.delete(self._name(path), remade=True)

    def sweep(self, dryrun: bool = False) -> None:
        self.pool.remove(dryrun)
