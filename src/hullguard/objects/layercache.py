"""Results of scanned image layers, kept in the state directory so no layer is scanned twice.

A layer is named by its uncompressed digest (``diff_id``): the same bytes in any image,
from any store, share one entry. Results are valid for one engine version and signature
database version; the layer's shape (whiteouts, written paths) is valid forever and is
stored separately, so a signature update re-scans but keeps what is needed to tell
whether a finding is hidden by a later layer.

SQLite in WAL mode with a busy timeout: the CLI and the agent use one cache at once.
Layers whose walk did not finish (corrupt, truncated) or whose outcome depended on the
moment (timeouts, read errors) are never stored.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hullguard.engine.verdict import Detection, NotScannedReason, Verdict, VerdictKind
from hullguard.objects.images.layerwalk import LayerScan, PathVerdict

SCHEMA_VERSION = 1
TRANSIENT = {NotScannedReason.TIMEOUT, NotScannedReason.ERROR, NotScannedReason.UNREADABLE,
             NotScannedReason.VANISHED, NotScannedReason.CHANGED}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layer_info (
    diff_id TEXT PRIMARY KEY, size INTEGER NOT NULL, head TEXT NOT NULL,
    entries_count INTEGER NOT NULL, whiteouts TEXT NOT NULL, opaque TEXT NOT NULL,
    entries BLOB NOT NULL, nondirs BLOB NOT NULL, anomalies TEXT NOT NULL,
    anomaly_count INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS layer_info_hint ON layer_info (size, head);
CREATE TABLE IF NOT EXISTS layer_results (
    diff_id TEXT NOT NULL, engine_version TEXT NOT NULL, db_version TEXT NOT NULL,
    files INTEGER NOT NULL, scanned_bytes INTEGER NOT NULL, verdicts TEXT NOT NULL,
    scanned_at TEXT NOT NULL, PRIMARY KEY (diff_id, engine_version, db_version));
CREATE TABLE IF NOT EXISTS blob_map (blob_digest TEXT PRIMARY KEY, diff_id TEXT NOT NULL);
"""


def verdict_to_json(v: Verdict) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": v.kind.value}
    if v.inner:
        d["inner"] = list(v.inner)
    if v.detection is not None:
        det = v.detection
        d["detection"] = {"name": det.name, "type": det.type, "suspicion": det.suspicion,
                          "tags": det.tags, "signature": det.signature, "engine": det.engine}
    if v.reason is not None:
        d["reason"] = v.reason.value
    if v.detail:
        d["detail"] = v.detail
    if v.sha1:
        d["sha1"] = v.sha1
    return d


def verdict_from_json(d: dict[str, Any]) -> Verdict:
    det = d.get("detection")
    reason = d.get("reason")
    return Verdict(
        kind=VerdictKind(d["kind"]),
        inner=tuple(str(x) for x in d.get("inner", ())),
        detection=Detection(**{k: str(v) for k, v in det.items()}) if isinstance(det, dict) else None,
        reason=NotScannedReason(reason) if reason else None,
        detail=str(d.get("detail", "")),
        sha1=str(d.get("sha1", "")),
    )


@dataclass(frozen=True)
class CachedResult:
    files: int
    scanned_bytes: int
    verdicts: tuple[PathVerdict, ...]


def cacheable(scan: LayerScan) -> bool:
    if not scan.complete or not scan.diff_id:
        return False
    return not any(pv.verdict.reason in TRANSIENT for pv in scan.verdicts)


class LayerCache:
    """Thread-safe (one connection behind a lock); open with :meth:`open` or :meth:`memory`."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: Path) -> LayerCache:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                conn.executescript("DELETE FROM layer_info; DELETE FROM layer_results; DELETE FROM blob_map;")
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> LayerCache:
        return cls.open(state_dir / "cache" / "layers.db")

    @classmethod
    def memory(cls) -> LayerCache:
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        conn.executescript(_SCHEMA)
        return cls(conn, None)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- results -------------------------------------------------------------------
    def result(self, diff_id: str, engine_version: str, db_version: str) -> CachedResult | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT files, scanned_bytes, verdicts FROM layer_results WHERE diff_id=? AND "
                "engine_version=? AND db_version=?", (diff_id, engine_version, db_version)).fetchone()
        if row is None:
            return None
        try:
            items = json.loads(row[2])
            verdicts = tuple(PathVerdict(str(i["path"]), verdict_from_json(i["verdict"])) for i in items)
        except (ValueError, KeyError, TypeError):
            return None  # a damaged row is a cache miss, never a wrong answer
        return CachedResult(int(row[0]), int(row[1]), verdicts)

    def has_info(self, diff_id: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM layer_info WHERE diff_id=?", (diff_id,)).fetchone() is not None

    def info(self, diff_id: str) -> LayerScan | None:
        """The layer's shape (no verdicts): whiteouts, opaque dirs and written paths."""
        with self._lock:
            row = self._conn.execute(
                "SELECT size, head, entries_count, whiteouts, opaque, entries, nondirs, anomalies, "
                "anomaly_count FROM layer_info WHERE diff_id=?", (diff_id,)).fetchone()
        if row is None:
            return None
        return LayerScan(diff_id=diff_id, size=int(row[0]), head=str(row[1]), entries_count=int(row[2]),
                         whiteouts=list(json.loads(row[3])), opaque=list(json.loads(row[4])),
                         entries=LayerScan.unpack_keys(row[5]), nondirs=LayerScan.unpack_keys(row[6]),
                         anomalies=list(json.loads(row[7])), anomaly_count=int(row[8]))

    def by_hint(self, size: int, head: str) -> list[str]:
        """diff_ids of known layers with this size and head hash (to be confirmed by a full hash)."""
        with self._lock:
            rows = self._conn.execute("SELECT diff_id FROM layer_info WHERE size=? AND head=?",
                                      (size, head)).fetchall()
        return [str(r[0]) for r in rows]

    def diff_id_of_blob(self, blob_digest: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT diff_id FROM blob_map WHERE blob_digest=?",
                                     (blob_digest,)).fetchone()
        return str(row[0]) if row else None

    def store(self, scan: LayerScan, engine_version: str, db_version: str, *, blob_digest: str = "") -> bool:
        """Remember a finished walk; returns False (and stores nothing) when it may not be reused."""
        if not cacheable(scan):
            return False
        entries, nondirs = scan.pack_keys()
        verdicts = json.dumps([{"path": pv.path, "verdict": verdict_to_json(pv.verdict)}
                               for pv in scan.verdicts], ensure_ascii=True)
        now = datetime.now(UTC).isoformat()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO layer_info VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (scan.diff_id, scan.size, scan.head, scan.entries_count, json.dumps(scan.whiteouts),
                     json.dumps(scan.opaque), entries, nondirs, json.dumps(scan.anomalies),
                     scan.anomaly_count))
                self._conn.execute(
                    "INSERT OR REPLACE INTO layer_results VALUES (?,?,?,?,?,?,?)",
                    (scan.diff_id, engine_version, db_version, scan.files, scan.scanned_bytes,
                     verdicts, now))
                if blob_digest and blob_digest != scan.diff_id:
                    self._conn.execute("INSERT OR REPLACE INTO blob_map VALUES (?,?)",
                                       (blob_digest, scan.diff_id))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return True

    def map_blob(self, blob_digest: str, diff_id: str) -> None:
        if blob_digest == diff_id:
            return
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO blob_map VALUES (?,?)", (blob_digest, diff_id))

    def stats(self) -> dict[str, int]:
        with self._lock:
            layers = self._conn.execute("SELECT count(*) FROM layer_info").fetchone()[0]
            results = self._conn.execute("SELECT count(*) FROM layer_results").fetchone()[0]
        return {"layers": int(layers), "results": int(results)}
