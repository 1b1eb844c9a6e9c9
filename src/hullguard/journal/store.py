"""The journal: detection records and scan sessions in one SQLite file.

SQLite (stdlib) because the journal is written by one agent from many threads, by ``hullguard
scan`` runs in other processes, and read by ``hullguard log`` at the same time; WAL mode lets
readers see committed records while a writer works, and ``busy_timeout`` makes concurrent
writers wait for each other instead of failing with "database is locked".

One connection per store, guarded by a lock: sqlite3 connections are not safe to share between
threads without one, and a single connection keeps the write path short (each ``add`` is one
``BEGIN IMMEDIATE`` transaction; WAL with ``synchronous=NORMAL`` needs no fsync per commit).

Times are stored as fixed-width ISO-8601 UTC text with microseconds (see ``codec.to_iso``), so
text comparison is time comparison and ``time`` can be indexed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

from hullguard.journal.codec import from_iso, storable, to_iso
from hullguard.journal.record import DetectionRecord, RecordKind, ScanSession, utcnow

SCHEMA_VERSION = 1
DEFAULT_BUSY_TIMEOUT = 10.0
"""Seconds a writer waits for another writer (or a checkpoint) before giving up."""

_RECORD_COLUMNS: tuple[str, ...] = (
    "time", "kind", "level", "module", "object", "detection", "type", "action", "user", "process",
    "event", "sha1", "info", "container_id", "container_name", "image", "layer", "session_id",
)
_SESSION_COLUMNS: tuple[str, ...] = (
    "module", "targets", "start", "end", "scanned", "detections", "cleaned", "not_scanned",
    "scanned_bytes", "exit_code", "user",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    module TEXT NOT NULL,
    targets TEXT NOT NULL,          -- JSON array of strings
    start TEXT NOT NULL,            -- ISO-8601 UTC, microseconds, Z
    "end" TEXT,
    scanned INTEGER NOT NULL DEFAULT 0,
    detections INTEGER NOT NULL DEFAULT 0,
    cleaned INTEGER NOT NULL DEFAULT 0,
    not_scanned INTEGER NOT NULL DEFAULT 0,
    scanned_bytes INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    user TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sessions_start ON sessions(start);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,             -- ISO-8601 UTC, microseconds, Z
    kind TEXT NOT NULL,
    level TEXT NOT NULL,
    module TEXT NOT NULL,
    object TEXT NOT NULL,
    detection TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL DEFAULT '',
    process TEXT NOT NULL DEFAULT '',
    event TEXT NOT NULL DEFAULT '',
    sha1 TEXT NOT NULL DEFAULT '',
    info TEXT NOT NULL DEFAULT '',
    container_id TEXT NOT NULL DEFAULT '',
    container_name TEXT NOT NULL DEFAULT '',
    image TEXT NOT NULL DEFAULT '',
    layer TEXT NOT NULL DEFAULT '',
    session_id INTEGER              -- sessions.id, not a foreign key: a record is never refused
);
CREATE INDEX IF NOT EXISTS records_time ON records(time);
CREATE INDEX IF NOT EXISTS records_module ON records(module COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS records_action ON records(action COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS records_container ON records(container_id);
CREATE INDEX IF NOT EXISTS records_session ON records(session_id);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class JournalError(Exception):
    """The journal cannot be opened, read or written; the message names the file and what to do."""


class JournalNotFound(JournalError):
    """A read-only open found no journal file (nothing has been recorded yet)."""


@dataclass(frozen=True)
class JournalCounts:
    """A small summary for ``hullguard status`` and the API."""

    total: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)
    """All records per module."""
    detections_by_module: dict[str, int] = field(default_factory=dict)
    last_record: datetime | None = None
    last_detection: datetime | None = None
    sessions: int = 0


_T = TypeVar("_T")


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _kinds(kind: RecordKind | Collection[RecordKind] | None) -> list[str]:
    if kind is None:
        return []
    if isinstance(kind, RecordKind):
        return [kind.value]
    return [RecordKind(k).value for k in kind]


class JournalStore:
    """Detection records and scan sessions; safe to use from many threads and next to other processes.

    Not to be shared across ``fork()``: a child process opens its own store.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()
        self._has_schema = True

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str, *, readonly: bool = False,
             busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> JournalStore:
        """Open (and create, with its schema and a 0700 parent directory) the journal at ``path``.

        When the file exists but cannot be written (read-only state directory, a user without
        write permission), the store is opened read-only instead. ``readonly=True`` never
        creates anything and raises :class:`JournalNotFound` when there is no file.
        """
        path = Path(path)
        if readonly:
            return cls._open_readonly(path, busy_timeout)
        try:
            exists = cls._stat(path)
            if not exists:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):  # another process was first: fine
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise JournalError(f"cannot create the journal at {path}: {exc.strerror or exc}") from exc
        try:
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            return cls._fallback_readonly(path, busy_timeout, exc)
        store = cls(path, conn, readonly=False)
        try:
            store._setup_writable(busy_timeout)
        except JournalError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            if _is_corrupt(exc):
                raise _corrupt(path, exc) from exc
            if _code(exc) in _NOT_WRITABLE:
                return cls._fallback_readonly(path, busy_timeout, exc)
            raise JournalError(f"cannot open the journal at {path}: {exc}") from exc
        return store

    @staticmethod
    def _stat(path: Path) -> bool:
        try:
            os.stat(path)
        except FileNotFoundError:
            return False
        return True

    @classmethod
    def _fallback_readonly(cls, path: Path, busy_timeout: float, why: sqlite3.Error) -> JournalStore:
        try:
            return cls._open_readonly(path, busy_timeout)
        except JournalNotFound:
            raise JournalError(f"cannot open the journal at {path}: {why}") from why

    @classmethod
    def _open_readonly(cls, path: Path, busy_timeout: float) -> JournalStore:
        try:
            if not cls._stat(path):
                raise JournalNotFound(f"no journal at {path} yet")
        except PermissionError as exc:
            raise JournalError(f"cannot read the journal at {path}: permission denied "
                               "(run as root or as the agent's user)") from exc
        uri = "file:" + quote(str(path.absolute()), safe="/")
        last: sqlite3.Error | None = None
        # mode=ro needs the WAL index (-shm) to exist or be creatable; when neither holds (a
        # read-only directory and no writer running), nobody is writing: read it as immutable.
        for params in ("mode=ro", "mode=ro&immutable=1"):
            try:
                conn = sqlite3.connect(f"{uri}?{params}", uri=True, timeout=busy_timeout,
                                       isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                last = exc
                continue
            store = cls(path, conn, readonly=True)
            try:
                store._setup_readonly(busy_timeout)
            except JournalError:
                conn.close()
                raise
            except sqlite3.Error as exc:
                conn.close()
                if _is_corrupt(exc):
                    raise _corrupt(path, exc) from exc
                last = exc
                continue
            return store
        raise JournalError(f"cannot read the journal at {path}: {last}")

    def _setup_common(self, busy_timeout: float) -> int:
        conn = self._connection()
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        # Reading the schema makes SQLite notice a file that is not a database.
        objects: int = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and objects:
            raise JournalError(f"{self.path} is an SQLite database but not a hullguard journal; "
                               "move it aside or point --state-dir elsewhere")
        if version > SCHEMA_VERSION:
            raise JournalError(f"the journal at {self.path} has schema version {version}, newer than "
                               f"this hullguard understands ({SCHEMA_VERSION}); upgrade hullguard")
        return version

    def _setup_writable(self, busy_timeout: float) -> None:
        version = self._setup_common(busy_timeout)
        conn = self._connection()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        if version < SCHEMA_VERSION:
            # BEGIN IMMEDIATE: two processes opening a new journal at once create it once.
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _setup_readonly(self, busy_timeout: float) -> None:
        version = self._setup_common(busy_timeout)
        # An empty file (version 0, no tables) is a journal with nothing in it yet.
        self._has_schema = version >= 1

    # --- plumbing -----------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"the journal at {self.path} is closed")
        return self._conn

    def _run(self, work: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        """Run ``work`` under the lock (in one transaction when it writes); sqlite errors -> JournalError."""
        if write and self.readonly:
            raise JournalError(f"the journal at {self.path} is open read-only; cannot record")
        with self._lock:
            conn = self._connection()
            try:
                if not write:
                    return work(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                return result
            except sqlite3.OperationalError as exc:
                raise JournalError(f"journal at {self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.IntegrityError | sqlite3.InterfaceError |
                              sqlite3.ProgrammingError):
                    raise
                raise _corrupt(self.path, exc) from exc

    # --- records ------------------------------------------------------------------------
    @staticmethod
    def _record_row(record: DetectionRecord) -> tuple[Any, ...]:
        kind = RecordKind(record.kind)
        values: list[Any] = []
        for name in _RECORD_COLUMNS:
            value = getattr(record, name)
            if name == "time":
                value = to_iso(value)
            elif name == "kind":
                value = kind.value
            elif isinstance(value, str):
                value = storable(value)
            values.append(value)
        return tuple(values)

    _INSERT_RECORD = (f"INSERT INTO records ({', '.join(_RECORD_COLUMNS)}) "
                      f"VALUES ({', '.join('?' for _ in _RECORD_COLUMNS)})")

    def add(self, record: DetectionRecord) -> int:
        """Record one detection; returns its id (the record itself is frozen and stays as it was)."""
        row = self._record_row(record)

        def work(conn: sqlite3.Connection) -> int:
            rowid = conn.execute(self._INSERT_RECORD, row).lastrowid
            assert rowid is not None
            return rowid

        return self._run(work, write=True)

    def add_many(self, records: Iterable[DetectionRecord]) -> None:
        """Record many detections in one transaction (all or none)."""
        rows = [self._record_row(r) for r in records]
        if rows:
            self._run(lambda conn: conn.executemany(self._INSERT_RECORD, rows), write=True)

    def query(self, *, since: datetime | None = None, until: datetime | None = None,
              module: str | None = None, action: str | None = None, container: str | None = None,
              kind: RecordKind | Collection[RecordKind] | None = None, session_id: int | None = None,
              limit: int | None = None, newest_first: bool = False) -> list[DetectionRecord]:
        """Records matching every given filter.

        ``since``/``until``: time >= since, time < until. ``module`` and ``action``: the full
        text, compared case-insensitively (aliases are resolved by ``journal.query``).
        ``container``: a container id prefix or an exact container name. ``kind``: one kind or
        several; None means all. ``limit``: the newest ``limit`` records. The result is in time
        order, oldest first, unless ``newest_first``.
        """
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("time >= ?")
            args.append(to_iso(since))
        if until is not None:
            where.append("time < ?")
            args.append(to_iso(until))
        if module is not None:
            where.append("module = ? COLLATE NOCASE")
            args.append(module)
        if action is not None:
            where.append("action = ? COLLATE NOCASE")
            args.append(action)
        if container is not None:
            name = container.lstrip("/")
            if not name:
                raise ValueError("container filter is empty")
            where.append("(container_id LIKE ? ESCAPE '\\' OR container_name = ? OR container_name = ?)")
            args += [_like_prefix(name), name, "/" + name]
        kinds = _kinds(kind)
        if kinds:
            where.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            args += kinds
        if session_id is not None:
            where.append("session_id = ?")
            args.append(session_id)
        rows = self._select("records", ", ".join(_RECORD_COLUMNS), "time", where, args,
                            limit=limit, newest_first=newest_first)
        return [self._record_from_row(row) for row in rows]

    def _select(self, table: str, columns: str, time_column: str, where: list[str], args: list[Any], *,
                limit: int | None, newest_first: bool) -> list[tuple[Any, ...]]:
        """Rows (id first, then ``columns``) matching every ``where`` clause: the newest ``limit``
        by ``time_column`` (ties: the later id), oldest first unless ``newest_first``.

        One place for what records and sessions share, so ``limit`` is checked and applied the
        same way for both, and a journal without a schema yet (opened read-only) reads as empty.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        sql = f"SELECT id, {columns} FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {time_column} DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        if not self._has_schema:
            return []
        rows: list[tuple[Any, ...]] = self._run(lambda conn: conn.execute(sql, args).fetchall())
        if not newest_first:
            rows.reverse()
        return rows

    @staticmethod
    def _record_from_row(row: tuple[Any, ...]) -> DetectionRecord:
        values = dict(zip(("id", *_RECORD_COLUMNS), row, strict=True))
        values["time"] = from_iso(values["time"])
        try:
            values["kind"] = RecordKind(values["kind"])
        except ValueError:
            values["kind"] = RecordKind.EVENT  # a kind from a newer version: show it, don't fail
        return DetectionRecord(**values)

    def iter_all(self, *, batch: int = 1000) -> Iterator[DetectionRecord]:
        """Every record in id order, fetched in batches (exports of big journals)."""
        last = 0
        sql = ("SELECT id, " + ", ".join(_RECORD_COLUMNS) +
               " FROM records WHERE id > ? ORDER BY id LIMIT ?")
        while self._has_schema:
            def page(conn: sqlite3.Connection, after: int = last) -> list[Any]:
                return conn.execute(sql, (after, batch)).fetchall()

            rows = self._run(page)
            if not rows:
                return
            for row in rows:
                yield self._record_from_row(row)
            last = rows[-1][0]

    def counts(self) -> JournalCounts:
        if not self._has_schema:
            return JournalCounts()

        def work(conn: sqlite3.Connection) -> JournalCounts:
            by_kind = dict(conn.execute("SELECT kind, count(*) FROM records GROUP BY kind").fetchall())
            by_module = dict(conn.execute(
                "SELECT module, count(*) FROM records GROUP BY module ORDER BY module").fetchall())
            detections = dict(conn.execute(
                "SELECT module, count(*) FROM records WHERE kind = ? GROUP BY module ORDER BY module",
                (RecordKind.DETECTION.value,)).fetchall())
            last_record = conn.execute("SELECT max(time) FROM records").fetchone()[0]
            last_detection = conn.execute("SELECT max(time) FROM records WHERE kind = ?",
                                          (RecordKind.DETECTION.value,)).fetchone()[0]
            sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
            return JournalCounts(
                total=sum(by_kind.values()), by_kind=by_kind, by_module=by_module,
                detections_by_module=detections,
                last_record=from_iso(last_record) if last_record else None,
                last_detection=from_iso(last_detection) if last_detection else None,
                sessions=sessions)

        return self._run(work)

    def delete_before(self, before: datetime) -> int:
        """Drop records older than ``before`` (retention); returns how many went."""
        return self._run(lambda conn: conn.execute(
            "DELETE FROM records WHERE time < ?", (to_iso(before),)).rowcount, write=True)

    # --- sessions -----------------------------------------------------------------------
    @staticmethod
    def _session_row(session: ScanSession) -> tuple[Any, ...]:
        return (storable(session.module),
                json.dumps([storable(t) for t in session.targets], ensure_ascii=False),
                to_iso(session.start), to_iso(session.end) if session.end else None,
                session.scanned, session.detections, session.cleaned, session.not_scanned,
                session.scanned_bytes, session.exit_code, storable(session.user))

    def start_session(self, session: ScanSession) -> int:
        """Record a session that has begun; sets and returns ``session.id``."""
        row = self._session_row(session)
        sql = (f"INSERT INTO sessions ({', '.join(_quoted(_SESSION_COLUMNS))}) "
               f"VALUES ({', '.join('?' for _ in _SESSION_COLUMNS)})")

        def work(conn: sqlite3.Connection) -> int:
            rowid = conn.execute(sql, row).lastrowid
            assert rowid is not None
            return rowid

        session.id = self._run(work, write=True)
        return session.id

    def update_session(self, session: ScanSession) -> None:
        """Store the session's current counters (progress of a long scan)."""
        if session.id is None:
            raise ValueError("the session was not started (no id)")
        sql = (f"UPDATE sessions SET {', '.join(c + ' = ?' for c in _quoted(_SESSION_COLUMNS))} "
               "WHERE id = ?")
        row = (*self._session_row(session), session.id)

        def work(conn: sqlite3.Connection) -> None:
            if conn.execute(sql, row).rowcount != 1:
                raise JournalError(f"journal at {self.path}: no session with id {session.id}")

        self._run(work, write=True)

    def finish_session(self, session: ScanSession) -> None:
        """Store the final counters; sets ``session.end`` to now when the caller left it empty."""
        if session.end is None:
            session.end = utcnow()
        self.update_session(session)

    def sessions(self, *, limit: int | None = None, since: datetime | None = None,
                 module: str | None = None, newest_first: bool = False) -> list[ScanSession]:
        """Sessions that started at or after ``since``; the newest ``limit``, oldest first."""
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("start >= ?")
            args.append(to_iso(since))
        if module is not None:
            where.append("module = ? COLLATE NOCASE")
            args.append(module)
        rows = self._select("sessions", ", ".join(_quoted(_SESSION_COLUMNS)), "start", where, args,
                            limit=limit, newest_first=newest_first)
        return [self._session_from_row(row) for row in rows]

    def get_session(self, session_id: int) -> ScanSession | None:
        if not self._has_schema:
            return None
        sql = f"SELECT id, {', '.join(_quoted(_SESSION_COLUMNS))} FROM sessions WHERE id = ?"
        row = self._run(lambda conn: conn.execute(sql, (session_id,)).fetchone())
        return self._session_from_row(row) if row else None

    @staticmethod
    def _session_from_row(row: tuple[Any, ...]) -> ScanSession:
        values = dict(zip(("id", *_SESSION_COLUMNS), row, strict=True))
        targets = json.loads(values["targets"])
        values["targets"] = [str(t) for t in targets] if isinstance(targets, list) else [str(targets)]
        values["start"] = from_iso(values["start"])
        values["end"] = from_iso(values["end"]) if values["end"] else None
        return ScanSession(**values)

    # --- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            conn, self._conn = self._conn, None
            if not self.readonly:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA optimize")
            conn.close()

    def __enter__(self) -> JournalStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


_NOT_WRITABLE = (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM,
                 sqlite3.SQLITE_AUTH)
"""Primary result codes after which a read-only open may still work."""


def _code(exc: sqlite3.Error) -> int:
    """The primary result code (the low byte of the extended one); 0 for errors Python raised itself."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else 0


def _is_corrupt(exc: sqlite3.Error) -> bool:
    return _code(exc) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or \
        type(exc) is sqlite3.DatabaseError


def _quoted(columns: Iterable[str]) -> list[str]:
    return [f'"{c}"' for c in columns]


def _corrupt(path: Path, exc: BaseException) -> JournalError:
    return JournalError(f"journal at {path} is not a readable SQLite database: {exc}; move it aside "
                        "(a new one is created on the next write)")
