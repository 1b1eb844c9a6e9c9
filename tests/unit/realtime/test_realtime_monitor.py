"""The monitor's answering logic with a recording stand-in for the kernel and a fake slow scanner.

The stand-ins are in monitor_support.py (a fanotify group that records answers and ignore
marks, a scan pool running a Python function), so the deadline, cache, dedup and policy paths
run here without privileges. The real kernel path is covered by tests/integration/test_realtime*.py.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from monitor_support import detected, event_for, make, never_scan, write_and_handle

from hullguard.engine.verdict import NotScannedReason, ScanOutcome, Verdict
from hullguard.realtime.exclusions import Exclusions
from hullguard.realtime.fanotify import FAN_CLOSE_WRITE, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM
from hullguard.response.policy import PolicyConfig, Remedy


def test_clean_file_is_allowed_and_cached_in_kernel_and_user_space(tmp_path: Path) -> None:
    calls: list[int] = []

    def scan(fd: int, size: int) -> ScanOutcome:
        calls.append(fd)
        return ScanOutcome()

    monitor, group, _ = make(scan, tmp_path)
    f = tmp_path / "ok"
    ev = write_and_handle(monitor, f, b"hello")
    assert group.wait_answer(ev.fd) == [True]
    time.sleep(0.05)
    assert ev.fd in group.ignored
    ev2 = event_for(f)
    monitor.handle(ev2)  # a user-space cache hit: answered on the spot, no scan
    assert group.answers[ev2.fd] == [True]
    assert len(calls) == 1 and monitor.stats.cache_hits == 1


def test_own_process_is_never_scanned(tmp_path: Path) -> None:
    monitor, group, _ = make(never_scan, tmp_path)
    f = tmp_path / "ok"
    ev = write_and_handle(monitor, f, b"x", pid=os.getpid())
    assert group.answers[ev.fd] == [True]
    assert monitor.stats.own == 1


def test_slow_scan_gets_the_default_answer_at_the_deadline_and_a_timeout_record(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(fd: int, size: int) -> ScanOutcome:
        release.wait(10)
        return ScanOutcome()

    monitor, group, records = make(slow, tmp_path, deadline=0.3)
    f = tmp_path / "big"
    f.write_bytes(b"x" * 100)
    ev = event_for(f, FAN_OPEN_EXEC_PERM)
    start = time.monotonic()
    monitor.handle(ev)
    assert group.wait_answer(ev.fd) == [True]
    took = time.monotonic() - start
    assert 0.25 <= took < 1.5
    assert records.event.wait(3)
    rec = records.items[0]
    assert rec.action == "Not scanned" and "timeout" in rec.info
    assert rec.event == "Event occurred on executing a file."
    release.set()
    time.sleep(0.1)
    assert group.answers[ev.fd] == [True]  # the late verdict does not answer twice


def test_fail_closed_denies_on_timeout(tmp_path: Path) -> None:
    release = threading.Event()
    monitor, group, _ = make(lambda fd, size: (release.wait(10), ScanOutcome())[1], tmp_path,
                             deadline=0.2, fail_closed=True)
    f = tmp_path / "x"
    ev = write_and_handle(monitor, f, b"x")
    assert group.wait_answer(ev.fd) == [False]
    release.set()


def test_overload_answers_at_once(tmp_path: Path) -> None:
    release = threading.Event()
    monitor, group, _ = make(lambda fd, size: (release.wait(10), ScanOutcome())[1], tmp_path,
                             deadline=30.0, max_queue=1)
    evs = []
    for i in range(5):
        f = tmp_path / f"f{i}"
        f.write_bytes(b"%d" % i)
        ev = event_for(f)
        evs.append(ev)
        monitor.handle(ev)
    time.sleep(0.1)
    # 2 scanning + 1 queued; the rest were answered immediately though the deadline is 30 s
    assert monitor.stats.overloads >= 2
    answered = [ev for ev in evs if ev.fd in group.answers]
    assert len(answered) == monitor.stats.overloads
    release.set()
    for ev in evs:
        assert group.wait_answer(ev.fd) == [True]


def test_concurrent_events_on_one_file_share_one_scan(tmp_path: Path) -> None:
    calls: list[int] = []
    release = threading.Event()

    def scan(fd: int, size: int) -> ScanOutcome:
        calls.append(fd)
        release.wait(5)
        return ScanOutcome()

    monitor, group, _ = make(scan, tmp_path)
    f = tmp_path / "shared"
    f.write_bytes(b"abc")
    evs = [event_for(f, FAN_OPEN_EXEC_PERM) for _ in range(4)]
    for ev in evs:
        monitor.handle(ev)
    release.set()
    for ev in evs:
        assert group.wait_answer(ev.fd) == [True]
    assert len(calls) == 1


def test_detection_in_host_file_is_denied_and_cleaned(tmp_path: Path) -> None:
    monitor, group, records = make(detected, tmp_path)
    f = tmp_path / "bad"
    ev = write_and_handle(monitor, f, b"bad", FAN_OPEN_EXEC_PERM)
    assert group.wait_answer(ev.fd) == [False]
    assert records.event.wait(3)
    rec = records.items[0]
    assert rec.action == "Cleaned by deleting"
    assert rec.object == f"file://{f}"
    assert rec.module == "Real-time file system protection"
    assert not f.exists()


def test_policy_block_denies_and_keeps_the_file(tmp_path: Path) -> None:
    monitor, group, records = make(detected, tmp_path, policy=PolicyConfig(host=Remedy.BLOCK))
    f = tmp_path / "bad"
    ev = write_and_handle(monitor, f, b"bad", FAN_OPEN_PERM)
    assert group.wait_answer(ev.fd) == [False]
    assert records.event.wait(3)
    assert records.items[0].action == "Blocked"
    assert f.exists()


def test_close_write_has_no_answer_but_is_recorded(tmp_path: Path) -> None:
    monitor, group, records = make(detected, tmp_path, policy=PolicyConfig(host=Remedy.RETAIN))
    f = tmp_path / "new"
    ev = write_and_handle(monitor, f, b"bad", FAN_CLOSE_WRITE)
    assert records.event.wait(3)
    assert records.items[0].event == "Event occurred on a newly created file."
    assert records.items[0].action == "Retained"
    assert ev.fd not in group.answers


def test_not_scanned_too_large_is_allowed_recorded_once_and_cached(tmp_path: Path) -> None:
    calls: list[int] = []

    def scan(fd: int, size: int) -> ScanOutcome:
        calls.append(fd)
        return ScanOutcome((Verdict.not_scanned(NotScannedReason.TOO_LARGE),))

    monitor, group, records = make(scan, tmp_path)
    f = tmp_path / "huge"
    f.write_bytes(b"x")
    for _ in range(2):
        ev = event_for(f)
        monitor.handle(ev)
        assert group.wait_answer(ev.fd) == [True]
        time.sleep(0.05)
    assert len(calls) == 1
    assert len(records.items) == 1 and "too large" in records.items[0].info


def test_excluded_path_is_not_scanned(tmp_path: Path) -> None:
    monitor, group, _ = make(never_scan, tmp_path,
                             exclusions=Exclusions(paths=(f"{tmp_path}/skip/*",)))
    (tmp_path / "skip").mkdir()
    f = tmp_path / "skip" / "a"
    f.write_bytes(b"x")
    ev = event_for(f)
    monitor.handle(ev)
    assert group.answers[ev.fd] == [True]


def test_scanner_exception_still_answers(tmp_path: Path) -> None:
    def boom(fd: int, size: int) -> ScanOutcome:
        raise RuntimeError("engine bug")

    monitor, group, records = make(boom, tmp_path)
    f = tmp_path / "x"
    ev = write_and_handle(monitor, f, b"x")
    assert group.wait_answer(ev.fd) == [True]
    assert records.event.wait(3)
    assert "error" in records.items[0].info
