"""The quarantine: infected files moved out of reach, kept restorable byte for byte.

Layout under ``state_dir/quarantine/`` (mode 0700)::

    key                 32-byte AES-256 key, mode 0600, made on first use
    <ID>/meta.json      what the file was: URI, host path, owner, mode, times, SHA-1, detection, container
    <ID>/data           the bytes, encrypted (format below)

Why encrypted: a quarantined file must not be executable, readable as the original, nor match
a scanner's signatures (ours or another product's) while it sits on disk. AES-GCM with a local
key does all three and also *authenticates* the content, so a damaged entry is detected
instead of restored as garbage. It does not hide the file from root, who holds the key; that
is not the point.

Data format: ``b"HGQ1" | chunk size (u32 BE) | nonce prefix (7 bytes)`` then the content in
1 MiB chunks, each sealed by AES-GCM with nonce ``prefix | chunk number (u32 BE) | final flag``
and the header plus the entry id as associated data. Chunking keeps memory flat for large
files; the counter and final flag make reordering, truncation or splicing of chunks fail the
tag check (the "STREAM" construction).

Durability: an entry is built in ``.tmp-<ID>/``, its files and the directory are fsynced, the
directory is renamed into place and the quarantine directory fsynced; only then is the
original unlinked, through :func:`hullguard.response.clean.delete_in_root` with the scanned
inode as ``expect``. Any failure before that (no space, size limit, file changed while being
copied) removes the partial entry and leaves the original where it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import UTC, datetime
from hashlib import sha1 as _sha1
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hullguard.engine.verdict import Verdict
from hullguard.journal.record import DetectionRecord, Level, Module, RecordKind
from hullguard.journal.store import JournalStore
from hullguard.objects import hostfs
from hullguard.objects.containers import pinned_host_path
from hullguard.objects.hostfs import RootedFile
from hullguard.objects.scanobject import ScanObject
from hullguard.objects.uri import escape_text
from hullguard.response.actions import Action
from hullguard.response.clean import delete_in_root, split_relpath
from hullguard.response.policy import Remedy
from hullguard.response.remediate import Handler, Remediation, register

MAGIC = b"HGQ1"
CHUNK = 1 << 20
TAG = 16
_HEADER = struct.Struct(">4sI7s")
DEFAULT_MAX_SIZE = 400 * 1024 * 1024
META = "meta.json"
DATA = "data"
KEY = "key"
RESTORED = "Restored"
DELETED = "Deleted"
"""Journal action texts of the quarantine module besides ``Action.QUARANTINED``."""


class QuarantineError(Exception):
    """A quarantine operation failed; the message says what happened to the file."""


class QuarantineNotFound(QuarantineError):
    pass


class QuarantineCorrupt(QuarantineError):
    """An entry whose metadata or data is damaged; other entries are unaffected."""


@dataclass(frozen=True)
class QuarantineSource:
    """A detected file to quarantine, located by its scan root (never by a bare path string)."""

    root: bytes
    relpath: bytes
    expect: tuple[int, int] | None = None
    """``(st_dev, st_ino)`` that was scanned; another file under that name is left alone."""
    host_root: bytes = b""
    """The host directory ``root`` stands for when ``root`` is a pinned ``/proc/.../fd/N/.`` path."""
    uri: str = ""
    """``str(ObjectURI)`` (raw, may hold surrogate-escaped bytes); its display form goes to output."""
    container_path: str = ""
    detection: str = ""
    detection_type: str = ""
    container_id: str = ""
    container_name: str = ""
    image: str = ""
    scope: str = ""
    mount: str = ""


@dataclass(frozen=True)
class QuarantineEntry:
    id: str
    created: str
    uri: str
    root: str
    relpath: str
    host_path: str
    uid: int
    gid: int
    mode: int
    atime_ns: int
    mtime_ns: int
    sha1: str
    size: int
    detection: str = ""
    detection_type: str = ""
    container_id: str = ""
    container_name: str = ""
    image: str = ""
    container_path: str = ""
    scope: str = ""
    mount: str = ""
    format: str = "aes-256-gcm-stream-1"

    @property
    def display_uri(self) -> str:
        return escape_text(self.uri)

    @property
    def name(self) -> bytes:
        """The original file name (bytes), used for ``restore --to DIR`` and export."""
        return os.fsencode(self.relpath).rstrip(b"/").rpartition(b"/")[2] or b"file"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str, entry_id: str) -> QuarantineEntry:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QuarantineCorrupt(f"quarantine entry {entry_id}: metadata is not valid JSON "
                                    f"({exc.msg})") from exc
        if not isinstance(data, dict):
            raise QuarantineCorrupt(f"quarantine entry {entry_id}: metadata is not an object")
        kwargs: dict[str, Any] = {}
        for f in fields(QuarantineEntry):
            if f.name not in data:
                if f.default is not MISSING:
                    continue
                raise QuarantineCorrupt(f"quarantine entry {entry_id}: metadata lacks {f.name!r}")
            value = data[f.name]
            want = int if f.type in ("int", int) else str
            if isinstance(value, bool) or not isinstance(value, want):
                raise QuarantineCorrupt(f"quarantine entry {entry_id}: metadata field {f.name!r} "
                                        f"has the wrong type")
            kwargs[f.name] = value
        entry = QuarantineEntry(**kwargs)
        if entry.id != entry_id:
            raise QuarantineCorrupt(f"quarantine entry {entry_id}: metadata belongs to {entry.id!r}")
        return entry


@dataclass(frozen=True)
class BrokenEntry:
    """What ``list`` shows for an entry that cannot be read."""

    id: str
    problem: str


Locator = Callable[["QuarantineEntry"], tuple[bytes, bytes] | None]
"""Maps an entry to ``(root, relpath)`` to restore into, or None when the place is gone."""


def host_locator(entry: QuarantineEntry) -> tuple[bytes, bytes] | None:
    """The root the file was found under, if that root still exists as a directory."""
    root = os.fsencode(entry.root)
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (root, os.fsencode(entry.relpath)) if stat.S_ISDIR(st.st_mode) else None


def _new_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(4)


def _valid_id(entry_id: str) -> bool:
    return bool(entry_id) and all(c.isalnum() or c == "-" for c in entry_id) and not entry_id.startswith("-")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_full(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    left = n
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _space_error(exc: OSError, what: str) -> QuarantineError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QuarantineError(f"{what}: no space left in the quarantine directory; "
                               "the original file was kept")
    return QuarantineError(f"{what}: {exc.strerror or exc}; the original file was kept")


class QuarantineStore:
    """The quarantine directory; every public method raises :class:`QuarantineError` on failure."""

    def __init__(self, directory: Path | str, *, max_size: int = DEFAULT_MAX_SIZE,
                 journal: JournalStore | None = None, user: str = "") -> None:
        self.directory = Path(directory)
        self.max_size = max_size
        self.journal = journal
        self.user = user

    @classmethod
    def for_state_dir(cls, state_dir: Path | str, **kwargs: Any) -> QuarantineStore:
        return cls(Path(state_dir) / "quarantine", **kwargs)

    # --- the key ------------------------------------------------------------------------
    def _ensure_dir(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat.S_IMODE(self.directory.stat().st_mode) & 0o077:
                os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise QuarantineError(f"cannot create quarantine directory {self.directory}: "
                                  f"{exc.strerror}") from exc

    def _key(self, *, create: bool) -> bytes:
        path = self.directory / KEY
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise QuarantineCorrupt(f"quarantine key {path} is missing: entries cannot be "
                                        "decrypted") from None
            return self._make_key(path)
        except OSError as exc:
            raise QuarantineError(f"cannot read quarantine key {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.fchmod(fd, 0o600)
            key = _read_full(fd, 64)
        finally:
            os.close(fd)
        if len(key) != 32:
            raise QuarantineCorrupt(f"quarantine key {path} is damaged ({len(key)} bytes, expected 32)")
        return key

    def _make_key(self, path: Path) -> bytes:
        """Made in a temp file and linked into place: concurrent first uses agree on one key."""
        key = AESGCM.generate_key(bit_length=256)
        tmp = path.with_name(f".key-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, key)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return self._key(create=False)
            finally:
                os.unlink(tmp)
            _fsync_dir(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _space_error(exc, "cannot create the quarantine key") from exc
        return key

    # --- storing --------------------------------------------------------------------------
    def quarantine(self, src: QuarantineSource) -> QuarantineEntry:
        """Copy the file encrypted into the store, durably, then delete the original.

        Refuses (original kept): a name that is not a regular file, a file with more than one
        hard link (deleting one name would not remove the content, and the other names may be
        outside the scanned root), a file larger than ``max_size``, a file that is not the
        scanned inode or changed while being copied, and every write error (ENOSPC...).
        """
        parts = split_relpath(src.relpath)
        what = "cannot quarantine " + escape_text(
            src.uri or os.fsdecode(hostfs.join(src.host_root or src.root, src.relpath)))
        if parts is None:
            raise QuarantineError(f"{what}: not a path below the scan root")
        try:
            root_fd = hostfs.open_dir_at(None, src.root)
            try:
                dir_fd = hostfs.open_dir_beneath(root_fd, b"/".join(parts[:-1]))
            finally:
                os.close(root_fd)
            try:
                fd = hostfs.open_file_at(dir_fd, parts[-1])
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise QuarantineError(f"{what}: {exc.strerror or exc}") from exc
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise QuarantineError(f"{what}: not a regular file")
            if src.expect is not None and (before.st_dev, before.st_ino) != src.expect:
                raise QuarantineError(f"{what}: the file was replaced since it was scanned")
            if before.st_nlink > 1:
                raise QuarantineError(f"{what}: hard-linked ({before.st_nlink} links)")
            if before.st_size > self.max_size:
                raise QuarantineError(f"{what}: {before.st_size} bytes is larger than the quarantine "
                                      f"size limit ({self.max_size} bytes)")
            self._ensure_dir()
            key = self._key(create=True)
            entry_id = _new_id()
            tmpdir = self.directory / f".tmp-{entry_id}"
            try:
                digest, size = self._write_entry(tmpdir, entry_id, key, fd, what)
                after = os.fstat(fd)
                if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                        before.st_size, before.st_mtime_ns, before.st_ctime_ns) or size != before.st_size:
                    raise QuarantineError(f"{what}: the file changed while it was being copied")
                entry = QuarantineEntry(
                    id=entry_id, created=datetime.now(UTC).isoformat(timespec="seconds"),
                    uri=src.uri or "file://" + os.fsdecode(hostfs.join(src.host_root or src.root, src.relpath)),
                    root=os.fsdecode(src.host_root or src.root), relpath=os.fsdecode(src.relpath),
                    host_path=os.fsdecode(hostfs.join(src.host_root or src.root, src.relpath)),
                    uid=before.st_uid, gid=before.st_gid, mode=stat.S_IMODE(before.st_mode),
                    atime_ns=before.st_atime_ns, mtime_ns=before.st_mtime_ns, sha1=digest, size=size,
                    detection=src.detection, detection_type=src.detection_type,
                    container_id=src.container_id, container_name=src.container_name, image=src.image,
                    container_path=src.container_path, scope=src.scope, mount=src.mount)
                self._write_file(tmpdir / META, entry.to_json().encode(), what)
                _fsync_dir(tmpdir)
                os.rename(tmpdir, self.directory / entry_id)
                _fsync_dir(self.directory)
            except OSError as exc:
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise _space_error(exc, what) from exc
            except BaseException:
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise
        finally:
            os.close(fd)
        if delete_in_root(src.root, src.relpath, expect=(before.st_dev, before.st_ino)) \
                is not Action.CLEANED_BY_DELETING:
            self._remove_entry(entry_id)
            raise QuarantineError(f"{what}: the original could not be deleted (it was replaced or "
                                  "its directory changed); the quarantined copy was discarded")
        self._journal(Action.QUARANTINED.value, entry, f"Quarantine ID {entry_id}")
        return entry

    def _write_entry(self, tmpdir: Path, entry_id: str, key: bytes, src_fd: int, what: str
                     ) -> tuple[str, int]:
        os.mkdir(tmpdir, 0o700)
        out = os.open(tmpdir / DATA, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            prefix = secrets.token_bytes(7)
            header = _HEADER.pack(MAGIC, CHUNK, prefix)
            aad = header + entry_id.encode()
            aes = AESGCM(key)
            _write_all(out, header)
            digest = _sha1()
            size = 0
            index = 0
            os.lseek(src_fd, 0, os.SEEK_SET)
            while True:
                chunk = _read_full(src_fd, CHUNK)
                size += len(chunk)
                if size > self.max_size:
                    raise QuarantineError(f"{what}: grew past the quarantine size limit "
                                          f"({self.max_size} bytes)")
                digest.update(chunk)
                final = len(chunk) < CHUNK
                _write_all(out, aes.encrypt(_nonce(prefix, index, final), chunk, aad))
                index += 1
                if final:
                    break
            os.fsync(out)
        finally:
            os.close(out)
        return digest.hexdigest().upper(), size

    @staticmethod
    def _write_file(path: Path, data: bytes, what: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- reading ----------------------------------------------------------------------------
    def _entry_dir(self, entry_id: str) -> Path:
        if not _valid_id(entry_id):
            raise QuarantineNotFound(f"no quarantine entry {escape_text(entry_id)!r}")
        path = self.directory / entry_id
        if not path.is_dir():
            raise QuarantineNotFound(f"no quarantine entry {escape_text(entry_id)!r} "
                                     "(see `hullguard quarantine list`)")
        return path

    def get(self, entry_id: str) -> QuarantineEntry:
        path = self._entry_dir(entry_id) / META
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            raise QuarantineCorrupt(f"quarantine entry {entry_id}: metadata is missing") from None
        except OSError as exc:
            raise QuarantineCorrupt(f"quarantine entry {entry_id}: cannot read metadata: "
                                    f"{exc.strerror}") from exc
        return QuarantineEntry.from_json(text, entry_id)

    def list(self) -> list[QuarantineEntry | BrokenEntry]:
        """All entries, oldest first; unreadable ones as :class:`BrokenEntry`, never an exception."""
        try:
            names = sorted(n for n in os.listdir(self.directory)
                           if _valid_id(n) and (self.directory / n).is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise QuarantineError(f"cannot read quarantine directory {self.directory}: "
                                  f"{exc.strerror}") from exc
        out: list[QuarantineEntry | BrokenEntry] = []
        for name in names:
            try:
                entry = self.get(name)
                if not (self.directory / name / DATA).is_file():
                    raise QuarantineCorrupt(f"quarantine entry {name}: data file is missing")
                out.append(entry)
            except QuarantineError as exc:
                out.append(BrokenEntry(name, str(exc)))
        return out

    def content(self, entry_id: str) -> Iterator[bytes]:
        """The original bytes, chunk by chunk, each chunk authenticated before it is yielded.

        A consumer must still treat the whole as valid only when the iterator finishes: the
        final chunk's flag and the SHA-1 of everything are checked at the end.
        """
        entry = self.get(entry_id)
        key = self._key(create=False)
        try:
            fd = os.open(self.directory / entry_id / DATA, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise QuarantineCorrupt(f"quarantine entry {entry_id}: cannot open data: "
                                    f"{exc.strerror}") from exc
        try:
            header = _read_full(fd, _HEADER.size)
            if len(header) != _HEADER.size:
                raise QuarantineCorrupt(f"quarantine entry {entry_id}: data is truncated")
            magic, chunk_size, prefix = _HEADER.unpack(header)
            if magic != MAGIC or not 0 < chunk_size <= 64 * CHUNK:
                raise QuarantineCorrupt(f"quarantine entry {entry_id}: data has an unknown format")
            aes = AESGCM(key)
            aad = header + entry_id.encode()
            digest = _sha1()
            size = 0
            index = 0
            while True:
                sealed = _read_full(fd, chunk_size + TAG)
                final = len(sealed) < chunk_size + TAG
                try:
                    plain = aes.decrypt(_nonce(prefix, index, final), sealed, aad)
                except InvalidTag:
                    raise QuarantineCorrupt(f"quarantine entry {entry_id}: data fails its "
                                            f"authentication check at chunk {index} (damaged or "
                                            "truncated); nothing was restored") from None
                digest.update(plain)
                size += len(plain)
                index += 1
                yield plain
                if final:
                    break
            if _read_full(fd, 1):
                raise QuarantineCorrupt(f"quarantine entry {entry_id}: data has trailing bytes")
        except OSError as exc:
            raise QuarantineCorrupt(f"quarantine entry {entry_id}: cannot read data: "
                                    f"{exc.strerror}") from exc
        finally:
            os.close(fd)
        if digest.hexdigest().upper() != entry.sha1.upper() or size != entry.size:
            raise QuarantineCorrupt(f"quarantine entry {entry_id}: content does not match its "
                                    "recorded SHA-1/size")

    # --- restoring, deleting, exporting ---------------------------------------------------------
    def restore(self, entry_id: str, to: Path | None = None, *, locator: Locator = host_locator,
                keep: bool = False) -> bytes:
        """Write the original back (byte-exact, owner, mode, times); returns the host path written.

        Without ``to`` the place comes from ``locator`` (the container's current MergedDir or
        volume for container files, the original root otherwise) and is reached with
        ``O_NOFOLLOW`` from that root. An existing file there is never replaced. The entry is
        removed once the file is back, unless ``keep``.
        """
        entry = self.get(entry_id)
        if to is None:
            place = locator(entry)
            if place is None:
                where = (f"container {entry.container_name or entry.container_id[:12]}"
                         if entry.container_id else escape_text(entry.root))
                raise QuarantineError(f"cannot restore {entry_id}: {where} no longer exists; "
                                      "use --to PATH")
            root, relpath = place
            parts = split_relpath(relpath)
            if parts is None:
                raise QuarantineError(f"cannot restore {entry_id}: bad original path")
            try:
                root_fd = hostfs.open_dir_at(None, root)
                try:
                    dir_fd = hostfs.open_dir_beneath(root_fd, b"/".join(parts[:-1]))
                finally:
                    os.close(root_fd)
            except OSError as exc:
                raise QuarantineError(f"cannot restore {entry_id}: the original directory "
                                      f"{escape_text(os.fsdecode(hostfs.join(pinned_host_path(root), *parts[:-1])))} "
                                      f"cannot be opened safely ({exc.strerror}); use --to PATH") from exc
            name, target = parts[-1], hostfs.join(pinned_host_path(root), relpath)
        else:
            dest = os.fsencode(to)
            if to.is_dir():
                parent, name = dest, entry.name
            else:
                parent, name = os.path.dirname(dest) or b".", os.path.basename(dest)
            try:
                dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise QuarantineError(f"cannot restore {entry_id}: {escape_text(os.fsdecode(parent))}: "
                                      f"{exc.strerror}") from exc
            target = hostfs.join(parent, name)
        try:
            self._restore_into(entry, dir_fd, name, target)
        finally:
            os.close(dir_fd)
        if not keep:
            self._remove_entry(entry_id)
        self._journal(RESTORED, entry,
                      f"Quarantine ID {entry_id} restored to {escape_text(os.fsdecode(target))}")
        return target

    def _restore_into(self, entry: QuarantineEntry, dir_fd: int, name: bytes, target: bytes) -> None:
        shown = escape_text(os.fsdecode(target))
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            raise QuarantineError(f"cannot restore {entry.id}: {shown} already exists; "
                                  "remove it or use --to PATH")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise QuarantineError(f"cannot restore {entry.id}: {shown}: {exc.strerror}") from exc
        tmp = b".hullguard-restore-" + entry.id.encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
        except OSError as exc:
            raise QuarantineError(f"cannot restore {entry.id} into {shown}: {exc.strerror}") from exc
        try:
            for plain in self.content(entry.id):
                _write_all(fd, plain)
            os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode & 0o7777)  # after chown, which clears set-id bits
            os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
            os.fsync(fd)
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            os.fsync(dir_fd)
        except FileExistsError:
            raise QuarantineError(f"cannot restore {entry.id}: {shown} already exists") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QuarantineError(f"cannot restore {entry.id}: no space left for {shown}; "
                                      "the entry was kept") from exc
            raise QuarantineError(f"cannot restore {entry.id} into {shown}: {exc.strerror}; "
                                  "the entry was kept") from exc
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)

    def delete(self, entry_id: str) -> None:
        """Remove an entry for good (corrupt ones too: that is how they are got rid of)."""
        path = self._entry_dir(entry_id)
        try:
            entry: QuarantineEntry | None = self.get(entry_id)
        except QuarantineCorrupt:
            entry = None
        self._remove_entry(entry_id)
        if not path.exists():
            self._journal(DELETED, entry, f"Quarantine ID {entry_id} deleted",
                          fallback_object=f"quarantine:{entry_id}")

    def export_zip(self, entry_id: str, output: Path) -> Path:
        """The original bytes in a .zip (stored, no password) under the original file name.

        A zip rather than the raw file: it cannot be executed or opened by accident by
        double-click or ``./file``, it keeps the name, and it is how samples are handed to
        analysts and vendors. The output is made with mode 0600 and never replaces a file.
        """
        entry = self.get(entry_id)
        if output.exists():
            raise QuarantineError(f"{escape_text(str(output))} already exists; choose another --output")
        tmp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as zf:
                info = zipfile.ZipInfo(os.fsdecode(entry.name).encode("utf-8", "replace").decode(),
                                       date_time=_zip_time(entry.mtime_ns))
                info.external_attr = (stat.S_IFREG | (entry.mode & 0o644)) << 16
                info.file_size = entry.size
                with zf.open(info, "w", force_zip64=entry.size > 0x7FFF0000) as member:
                    for plain in self.content(entry_id):
                        member.write(plain)
                raw.flush()
                os.fsync(raw.fileno())
            os.link(tmp, output)
        except FileExistsError:
            raise QuarantineError(f"{escape_text(str(output))} already exists") from None
        except OSError as exc:
            raise QuarantineError(f"cannot write {escape_text(str(output))}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return output

    # --- helpers ------------------------------------------------------------------------------
    def _remove_entry(self, entry_id: str) -> None:
        path = self.directory / entry_id
        doomed = self.directory / f".del-{entry_id}"
        try:
            os.rename(path, doomed)  # atomic: the entry is gone before its files are
            shutil.rmtree(doomed)
            _fsync_dir(self.directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise QuarantineError(f"cannot remove quarantine entry {entry_id}: {exc.strerror}") from exc

    def _journal(self, text: str, entry: QuarantineEntry | None, info: str, *,
                 fallback_object: str = "") -> None:
        if self.journal is None:
            return
        if entry is None:
            record = DetectionRecord(module=Module.QUARANTINE.value, object=fallback_object, action=text,
                                     level=Level.INFO.value, info=info, kind=RecordKind.EVENT,
                                     user=self.user)
        else:
            record = DetectionRecord(
                module=Module.QUARANTINE.value, object=entry.display_uri, detection=entry.detection,
                type=entry.detection_type, action=text, level=Level.INFO.value, user=self.user,
                sha1=entry.sha1, info=info, kind=RecordKind.EVENT, container_id=entry.container_id,
                container_name=escape_text(entry.container_name), image=entry.image)
        self.journal.add(record)


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if final else 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _zip_time(mtime_ns: int) -> tuple[int, int, int, int, int, int]:
    t = datetime.fromtimestamp(mtime_ns / 1e9, UTC)
    if t.year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


# --- the remediation handler ----------------------------------------------------------------------
def make_handler(store: QuarantineStore) -> Handler:
    """The ``Remedy.QUARANTINE`` handler for :mod:`hullguard.response.remediate`, bound to a store."""

    def quarantine_handler(obj: ScanObject, verdict: Verdict, location: RootedFile | None) -> Remediation:
        if location is None:
            return Remediation(Action.RETAINED, "not reachable on the host file system")
        ctx = obj.context
        det = verdict.detection
        src = QuarantineSource(
            root=location.root, relpath=location.relpath, expect=(location.dev, location.ino),
            host_root=pinned_host_path(location.root) if location.root.startswith(b"/proc/") else b"",
            uri=str(obj.uri), container_path=obj.uri.path if obj.uri.scheme == "docker" else "",
            detection=det.name if det else "", detection_type=det.type if det else "",
            container_id=ctx.container.id if ctx.container else "",
            container_name=ctx.container.name if ctx.container else "",
            image=ctx.image or (ctx.container.image if ctx.container else ""),
            scope=ctx.scope.value, mount=ctx.mount)
        try:
            entry = store.quarantine(src)
        except QuarantineError as exc:
            return Remediation(Action.CLEAN_FAILED, str(exc))
        return Remediation(Action.QUARANTINED, f"Quarantine ID {entry.id}")

    return quarantine_handler


def install(store: QuarantineStore) -> None:
    """Make ``Remedy.QUARANTINE`` use ``store`` (called once a command knows its state directory)."""
    register(Remedy.QUARANTINE, make_handler(store))
