"""Writers in threads and in another process, readers in another process: nobody sees "database is locked"."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from hullguard.journal.record import DetectionRecord, Module, RecordKind, ScanSession
from hullguard.journal.store import JournalStore

PER_THREAD = 1000
OTHER_PROCESS = 500

READER = """
import sys, time
from hullguard.journal.store import JournalStore
path, expected = sys.argv[1], int(sys.argv[2])
reads = 0
highest = 0
with JournalStore.open(path, readonly=True) as s:
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        total = s.counts().total
        newest = s.query(limit=5, kind=None)
        assert total >= highest, (total, highest)   # committed records never disappear
        assert len(newest) >= min(total, 5)  # two reads: the second may see more
        highest = total
        reads += 1
        if total >= expected:
            break
print(f"reads={reads} highest={highest}", flush=True)
"""

WRITER = """
import sys
from hullguard.journal.record import DetectionRecord
from hullguard.journal.store import JournalStore
path, count = sys.argv[1], int(sys.argv[2])
with JournalStore.open(path) as s:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(count):
        s.add(DetectionRecord(module="Real-time file system protection", object=f"file:///p/{i}",
                              detection="Eicar", container_id="c" * 64))
print("done", flush=True)
"""


def _start(script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


def test_threads_and_processes_share_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    store = JournalStore.open(path)
    expected = 2 * PER_THREAD + OTHER_PROCESS
    reader = _start(READER, str(path), str(expected))
    writer = _start(WRITER, str(path), str(OTHER_PROCESS))
    errors: list[BaseException] = []
    session = ScanSession(targets=["/"])
    store.start_session(session)

    def write(tag: str) -> None:
        try:
            for i in range(PER_THREAD):
                store.add(DetectionRecord(module=Module.ON_DEMAND.value, object=f"file:///{tag}/{i}",
                                          detection="Eicar", session_id=session.id))
                if i % 100 == 0:
                    session.scanned = i
                    store.update_session(session)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
    started = time.monotonic()
    assert writer.stdin is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    w_out, w_err = writer.communicate(timeout=120)
    r_out, r_err = reader.communicate(timeout=150)
    elapsed = time.monotonic() - started

    assert not errors, errors
    assert writer.returncode == 0, w_err
    assert w_out.strip() == "done"
    assert "locked" not in w_err
    assert reader.returncode == 0, r_err
    assert "locked" not in r_err
    reads = int(r_out.split("reads=")[1].split()[0])
    assert f"highest={expected}" in r_out
    assert reads >= 2, r_out  # it really read while the writers were writing
    assert store.counts().total == expected
    objects = {r.object for r in store.query(kind=RecordKind.DETECTION)}
    assert len(objects) == 2 * PER_THREAD + OTHER_PROCESS
    assert len(store.query(session_id=session.id)) == 2 * PER_THREAD
    assert len(store.query(container="cccc")) == OTHER_PROCESS
    store.close()
    assert elapsed < 120
