"""JournalStore: round trips, filters, sessions, summaries and what happens to bad files."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from hullguard.journal.record import DetectionRecord, Level, Module, RecordKind, ScanSession
from hullguard.journal.store import SCHEMA_VERSION, JournalError, JournalNotFound, JournalStore

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
CID = "0123456789abcdef" * 4


def rec(**kw: object) -> DetectionRecord:
    base: dict[str, object] = dict(module=Module.ON_DEMAND.value, object="file:///tmp/t/eicar.com",
                                   detection="Eicar", type="Test file", action="Cleaned by deleting",
                                   time=T0)
    base.update(kw)
    return DetectionRecord(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JournalStore]:
    s = JournalStore.open(tmp_path / "state" / "journal.db")
    yield s
    s.close()


def test_open_creates_private_dir_file_and_wal_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "journal.db"
    with JournalStore.open(path):
        pass
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"records", "sessions"} <= tables
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"records_time", "records_module", "records_action", "records_container"} <= indexes
        cols = [r[1] for r in conn.execute("PRAGMA table_info(records)")]
        assert "container_id" in cols and "session_id" in cols
    finally:
        conn.close()


def test_reopen_keeps_records(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with JournalStore.open(path) as s:
        s.add(rec())
    with JournalStore.open(path) as s:
        assert len(s.query()) == 1


def test_round_trip_all_fields_non_ascii_and_escaped(store: JournalStore) -> None:
    original = DetectionRecord(
        module=Module.REALTIME.value,
        object="docker://nginx:1.25@" + CID + "/srv/данные/日本\\x0a\\xff \"q\",x.zip!/in ner/é.com",
        detection="Win.Test.EICAR_HDB-1", type="Test file", action="Retained", level=Level.WARNING.value,
        user="über", process="/usr/bin/python3 -c 'x'", event="Event occurred on opening a file.",
        sha1="3395856CE81F2B7382DEE72602F798B642F14140", info="@NAME=Eicar@TYPE=Teststring@SUSP=inf",
        kind=RecordKind.DETECTION, time=T0, container_id=CID, container_name="web",
        image="nginx:1.25", layer="sha256:" + "ab" * 32, session_id=7)
    rid = store.add(original)
    [back] = store.query()
    assert back == replace(original, id=rid)
    assert back.time.tzinfo is not None and back.time.microsecond == 123456


def test_undecodable_text_is_stored_escaped_not_refused(store: JournalStore) -> None:
    store.add(rec(process=os.fsdecode(b"/tmp/\xff\xfe"), user="a\udcc3"))
    [back] = store.query()
    assert back.process == "/tmp/\\xff\\xfe"
    assert back.user == "a\\xc3"


def test_times_are_utc_whatever_the_input_zone(store: JournalStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    store.add(rec(time=datetime(2024, 5, 1, 14, 0, tzinfo=plus2)))
    store.add(rec(time=datetime(2024, 5, 1, 12, 30)))  # naive: taken as UTC
    times = [r.time for r in store.query()]
    assert times == [datetime(2024, 5, 1, 12, 0, tzinfo=UTC), datetime(2024, 5, 1, 12, 30, tzinfo=UTC)]
    assert all(t.utcoffset() == timedelta(0) for t in times)


def test_query_orders_by_time_and_limit_keeps_newest(store: JournalStore) -> None:
    # inserted out of order, as threads do
    for minutes in (5, 1, 3, 2, 4):
        store.add(rec(time=T0 + timedelta(minutes=minutes), detection=f"d{minutes}"))
    assert [r.detection for r in store.query()] == ["d1", "d2", "d3", "d4", "d5"]
    assert [r.detection for r in store.query(limit=2)] == ["d4", "d5"]
    assert [r.detection for r in store.query(limit=2, newest_first=True)] == ["d5", "d4"]
    assert store.query(limit=0) == []
    with pytest.raises(ValueError):
        store.query(limit=-1)


def test_since_and_until_with_microseconds(store: JournalStore) -> None:
    store.add(rec(time=T0, detection="a"))
    store.add(rec(time=T0 + timedelta(microseconds=1), detection="b"))
    store.add(rec(time=T0 + timedelta(days=1), detection="c"))
    assert [r.detection for r in store.query(since=T0 + timedelta(microseconds=1))] == ["b", "c"]
    assert [r.detection for r in store.query(since=T0)] == ["a", "b", "c"]
    assert [r.detection for r in store.query(until=T0 + timedelta(microseconds=1))] == ["a"]
    # a since in another zone means the same instant
    local = (T0 + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-5)))
    assert [r.detection for r in store.query(since=local)] == ["c"]


def test_module_action_kind_filters(store: JournalStore) -> None:
    store.add(rec(detection="a"))
    store.add(rec(detection="b", module=Module.REALTIME.value, action="Retained"))
    store.add(rec(detection="", kind=RecordKind.NOT_SCANNED, action="Not scanned", info="encrypted"))
    store.add(rec(detection="", kind=RecordKind.EVENT, module=Module.AGENT.value, action=""))
    assert [r.detection for r in store.query(module="on-demand SCAN")] == ["a", ""]
    assert [r.detection for r in store.query(module=Module.REALTIME.value)] == ["b"]
    assert store.query(module="nothing") == []
    assert [r.detection for r in store.query(action="cleaned BY deleting")] == ["a"]
    assert [r.detection for r in store.query(action="retained")] == ["b"]
    assert [r.kind for r in store.query(kind=RecordKind.NOT_SCANNED)] == [RecordKind.NOT_SCANNED]
    both = store.query(kind=(RecordKind.DETECTION, RecordKind.NOT_SCANNED))
    assert [r.kind for r in both] == [RecordKind.DETECTION, RecordKind.DETECTION, RecordKind.NOT_SCANNED]
    assert len(store.query(kind=None)) == 4
    assert store.query(module=Module.ON_DEMAND.value, action="Retained") == []


def test_container_filter_by_id_prefix_or_name(store: JournalStore) -> None:
    store.add(rec(detection="web", container_id=CID, container_name="web"))
    store.add(rec(detection="db", container_id="f" * 64, container_name="db_1"))
    store.add(rec(detection="host"))
    assert [r.detection for r in store.query(container="0123")] == ["web"]
    assert [r.detection for r in store.query(container=CID)] == ["web"]
    assert [r.detection for r in store.query(container="web")] == ["web"]
    assert [r.detection for r in store.query(container="/web")] == ["web"]
    assert [r.detection for r in store.query(container="db_1")] == ["db"]
    # LIKE wildcards in the prefix are literal
    assert store.query(container="%") == []
    assert store.query(container="db_") == []
    assert store.query(container="we") == []  # names match exactly, only ids by prefix
    with pytest.raises(ValueError):
        store.query(container="/")


def test_add_many_is_one_transaction(store: JournalStore) -> None:
    store.add_many(rec(detection=str(i)) for i in range(50))
    assert len(store.query()) == 50
    store.add_many([])
    assert len(store.query()) == 50


def test_sessions_and_record_links(store: JournalStore) -> None:
    s1 = ScanSession(targets=["/tmp/t", "container:web", "файл"], start=T0, user="root")
    sid = store.start_session(s1)
    assert sid == s1.id and sid is not None
    store.add(rec(session_id=sid, detection="in"))
    store.add(rec(detection="out"))
    s1.scanned, s1.detections, s1.cleaned, s1.not_scanned, s1.scanned_bytes = 10, 1, 1, 2, 4096
    store.update_session(s1)
    assert store.get_session(sid) == s1 and s1.end is None
    s1.exit_code = 10
    store.finish_session(s1)
    assert s1.end is not None
    s2 = ScanSession(targets=["image:alpine"], module=Module.IMAGE.value, start=T0 + timedelta(hours=1))
    store.start_session(s2)
    got = store.sessions()
    assert got == [s1, s2]
    assert got[0].targets == ["/tmp/t", "container:web", "файл"] and got[0].exit_code == 10
    assert got[1].end is None and got[1].exit_code is None
    assert store.sessions(limit=1) == [s2]
    assert store.sessions(since=T0 + timedelta(minutes=1)) == [s2]
    assert store.sessions(module="container image SCAN") == [s2]
    assert [r.detection for r in store.query(session_id=sid)] == ["in"]
    assert store.get_session(999) is None
    with pytest.raises(ValueError):
        store.finish_session(ScanSession(targets=[]))


def test_counts(store: JournalStore) -> None:
    assert store.counts().total == 0 and store.counts().last_detection is None
    store.add(rec(time=T0))
    store.add(rec(time=T0 + timedelta(hours=1), module=Module.REALTIME.value))
    store.add(rec(time=T0 + timedelta(hours=2), kind=RecordKind.NOT_SCANNED))
    store.start_session(ScanSession(targets=["/"]))
    c = store.counts()
    assert c.total == 3
    assert c.by_kind == {"detection": 2, "not_scanned": 1}
    assert c.by_module == {Module.ON_DEMAND.value: 2, Module.REALTIME.value: 1}
    assert c.detections_by_module == {Module.ON_DEMAND.value: 1, Module.REALTIME.value: 1}
    assert c.last_detection == T0 + timedelta(hours=1)
    assert c.last_record == T0 + timedelta(hours=2)
    assert c.sessions == 1


def test_iter_all_and_delete_before(store: JournalStore) -> None:
    store.add_many(rec(time=T0 + timedelta(seconds=i), detection=str(i)) for i in range(25))
    assert [r.detection for r in store.iter_all(batch=7)] == [str(i) for i in range(25)]
    assert store.delete_before(T0 + timedelta(seconds=10)) == 10
    assert len(store.query()) == 15


def test_closed_store_raises_journal_error(tmp_path: Path) -> None:
    s = JournalStore.open(tmp_path / "j.db")
    s.close()
    s.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        s.query()


@pytest.mark.parametrize("content", [b"this is not a database at all\n" * 100,
                                     b"SQLite format 3\x00" + b"\xff" * 4080])
def test_corrupt_file_gives_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(JournalError) as info:
            JournalStore.open(path, readonly=readonly)
        message = str(info.value)
        assert f"journal at {path} is not a readable SQLite database" in message
        assert "move it aside" in message
    assert path.read_bytes() == content  # never overwritten


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        JournalStore.open(path)


def test_foreign_sqlite_database_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    for readonly in (False, True):
        with pytest.raises(JournalError, match="not a hullguard journal"):
            JournalStore.open(path, readonly=readonly)
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["mine"]
    conn.close()


def test_readonly_open(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with pytest.raises(JournalNotFound):
        JournalStore.open(path, readonly=True)
    assert not path.exists()  # a read-only open creates nothing
    with JournalStore.open(path) as w:
        w.add(rec())
        with JournalStore.open(path, readonly=True) as r:
            assert r.readonly
            assert len(r.query()) == 1
            w.add(rec())
            assert len(r.query()) == 2  # sees the writer's commits
            with pytest.raises(JournalError, match="read-only"):
                r.add(rec())


def test_readonly_open_of_empty_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(b"")
    with JournalStore.open(path, readonly=True) as r:
        assert r.query() == [] and r.sessions() == [] and r.counts().total == 0


def test_cannot_create_gives_journal_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="cannot create"):
        JournalStore.open(blocker / "journal.db")


def _python_for(user: str) -> str | None:
    """An interpreter (3.11+) that ``user`` may run; root's venv may sit in a private directory."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            ok = subprocess.run([candidate, "-c", "import sys; assert sys.version_info >= (3, 11)"],
                                user=user, capture_output=True, timeout=30, check=False).returncode == 0
        except OSError:
            ok = False
        if ok:
            return candidate
    return None


READER = """
import sys
from hullguard.journal.store import JournalStore
with JournalStore.open(sys.argv[1]) as s:
    print(s.readonly, len(s.query()))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a reader as another user")
def test_unwritable_state_dir_falls_back_to_readonly() -> None:
    """A user who may read the journal but not write its directory still reads it.

    Root ignores permissions, so the reader runs as ``nobody`` against a world-readable copy.
    """
    base = Path(tempfile.mkdtemp(prefix="hg-journal-ro-"))
    try:
        os.chmod(base, 0o755)
        state = base / "state"
        path = state / "journal.db"
        with JournalStore.open(path) as s:
            s.add(rec())
            s.add(rec())
        # after the last close SQLite removes -wal/-shm: a read-only reader cannot create them
        assert not Path(str(path) + "-shm").exists()
        os.chmod(path, 0o644)
        os.chmod(state, 0o755)
        python = _python_for("nobody")
        if python is None:
            pytest.skip("no Python 3.11 that user nobody may run")
        src = Path(__file__).resolve().parents[3] / "src"
        env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        out = subprocess.run([python, "-c", READER, str(path)], user="nobody", env=env,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["True", "2"]
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
