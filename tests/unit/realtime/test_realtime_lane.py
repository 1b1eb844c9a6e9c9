"""The context lane: work that may open files never runs on the thread that answers the kernel.

An open by the reader thread on a marked filesystem waits for an answer only the reader can
give (a deadlock of the whole filesystem, seen with ``exclude_users`` on a container: its
``/etc/passwd`` is on its marked overlay). These tests call :meth:`Monitor.handle` the way the
reader does and check that user names and the behaviour exec gate are looked up on another
thread, with the deadline still applying to them. Pid 1 stands in for a foreign process: it
is alive and does not descend from the test process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from monitor_support import FakeGroup, Records, event_for, make

from hullguard.engine.verdict import ScanOutcome
from hullguard.realtime.context import UserNames
from hullguard.realtime.exclusions import Exclusions
from hullguard.realtime.fanotify import FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM
from hullguard.realtime.monitor import Monitor

FOREIGN = 1


class RecordingNames(UserNames):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def host(self, uid: int) -> str:
        self.threads.append(threading.current_thread())
        return super().host(uid)

    def in_root(self, root: str, uid: int) -> str:
        self.threads.append(threading.current_thread())
        return super().in_root(root, uid)


def never_scanned(fd: int, size: int) -> ScanOutcome:
    raise AssertionError("an excluded access was scanned")


def _monitor(tmp_path: Path, scan: object, **settings: object) -> tuple[Monitor, FakeGroup, Records, Path]:
    monitor, group, records = make(scan, tmp_path, **settings)
    f = tmp_path / "f"
    f.write_bytes(b"content")
    return monitor, group, records, f


def test_user_names_for_exclusions_are_read_off_the_reader_thread(tmp_path: Path) -> None:
    monitor, group, _, f = _monitor(tmp_path, never_scanned, exclusions=Exclusions(users=("root",)))
    names = RecordingNames()
    monitor.users = names
    try:
        ev = event_for(f, FAN_OPEN_PERM, pid=FOREIGN)
        monitor.handle(ev)
        assert group.wait_answer(ev.fd) == [True]
        assert names.threads, "the user exclusion was never consulted"
        assert threading.current_thread() not in names.threads
    finally:
        monitor.lane.stop()


def test_a_user_not_excluded_is_scanned_after_the_lane(tmp_path: Path) -> None:
    scanned: list[int] = []

    def scan(fd: int, size: int) -> ScanOutcome:
        scanned.append(fd)
        return ScanOutcome()

    monitor, group, _, f = _monitor(tmp_path, scan, exclusions=Exclusions(users=("nobody-here",)))
    try:
        ev = event_for(f, FAN_OPEN_PERM, pid=FOREIGN)
        monitor.handle(ev)
        assert group.wait_answer(ev.fd) == [True]
        assert scanned == [ev.fd]
    finally:
        monitor.lane.stop()


def test_exec_gate_runs_off_the_reader_thread_and_its_deny_is_the_answer(tmp_path: Path) -> None:
    monitor, group, _, f = _monitor(tmp_path, never_scanned)
    asked: list[threading.Thread] = []

    def gate(pid: int, path: bytes, container: str) -> object:
        asked.append(threading.current_thread())
        return "deny"

    monitor.exec_gate = gate
    try:
        ev = event_for(f, FAN_OPEN_EXEC_PERM, pid=FOREIGN)
        monitor.handle(ev)
        assert group.wait_answer(ev.fd) == [False]
        assert asked and threading.current_thread() not in asked
    finally:
        monitor.lane.stop()


def test_a_hanging_exec_gate_neither_blocks_the_reader_nor_outlives_the_deadline(tmp_path: Path) -> None:
    monitor, group, records, f = _monitor(tmp_path, lambda fd, size: ScanOutcome(), deadline=0.3)
    release = threading.Event()

    def gate(pid: int, path: bytes, container: str) -> object:
        release.wait(10)
        return None

    monitor.exec_gate = gate
    try:
        ev = event_for(f, FAN_OPEN_EXEC_PERM, pid=FOREIGN)
        start = time.monotonic()
        monitor.handle(ev)
        assert time.monotonic() - start < 0.2  # the reader is free at once
        other = event_for(f, FAN_OPEN_PERM, pid=FOREIGN)
        monitor.handle(other)  # an open meanwhile is answered without the gate
        assert group.wait_answer(other.fd) == [True]
        assert group.wait_answer(ev.fd, timeout=3) == [True]
        assert 0.25 <= time.monotonic() - start < 2.0
        assert records.event.wait(3)
        assert any("timeout" in r.info for r in records.items)
    finally:
        release.set()
        monitor.lane.stop()


def test_host_executions_skip_the_gate_while_no_gate_rule_can_match_them(tmp_path: Path) -> None:
    """The default behaviour rules match container executions only: a host file's execution is
    scanned once and then left to the kernel's ignore mark (executions included), as with
    behaviour monitoring off. A reload that makes host executions matchable drops those marks."""
    scanned: list[int] = []

    def scan(fd: int, size: int) -> ScanOutcome:
        scanned.append(fd)
        return ScanOutcome()

    monitor, group, _, f = _monitor(tmp_path, scan)
    asked: list[bytes] = []
    host_rules = [False]

    def gate(pid: int, path: bytes, container: str) -> object:
        asked.append(path)
        return None

    monitor.exec_gate = gate
    monitor.exec_gate_host = lambda: host_rules[0]
    try:
        ev = event_for(f, FAN_OPEN_EXEC_PERM, pid=FOREIGN)
        monitor.handle(ev)
        assert group.wait_answer(ev.fd) == [True]
        assert asked == [] and scanned == [ev.fd]
        assert group.ignore_masks and group.ignore_masks[-1] & FAN_OPEN_EXEC_PERM
        host_rules[0] = True  # e.g. a rule file without the container condition was loaded
        again = event_for(f, FAN_OPEN_EXEC_PERM, pid=FOREIGN)
        monitor.handle(again)
        assert group.wait_answer(again.fd) == [True]
        assert asked and group.flushes == 1
        f.write_bytes(b"changed")  # a new version: scanned, and its ignore mark leaves executions to the gate
        third = event_for(f, FAN_OPEN_EXEC_PERM, pid=FOREIGN)
        monitor.handle(third)
        assert group.wait_answer(third.fd) == [True]
        assert not group.ignore_masks[-1] & FAN_OPEN_EXEC_PERM
    finally:
        monitor.lane.stop()


def test_who_opened_a_clean_file_is_read_only_when_something_is_recorded(tmp_path: Path, monkeypatch: object) -> None:
    """Reading the process's context cost more than scanning a small file: a clean permission
    event on a non-empty file, with no exclusions, is answered without it; a detection reads it
    while the process still waits, and its record names the process."""
    from monitor_support import detected

    import hullguard.realtime.monitor as monitor_module

    calls: list[int] = []
    real = monitor_module.resolve

    def counting(pid: int, *a: object, **k: object) -> object:
        calls.append(pid)
        return real(pid, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(monitor_module, "resolve", counting)  # type: ignore[attr-defined]
    monitor, group, _, f = _monitor(tmp_path, lambda fd, size: ScanOutcome())
    try:
        ev = event_for(f, FAN_OPEN_PERM, pid=FOREIGN)
        monitor.handle(ev)
        assert group.wait_answer(ev.fd) == [True]
        assert calls == []
        empty = tmp_path / "new"
        empty.write_bytes(b"")  # an empty file is usually being written: its writer is remembered now
        ev2 = event_for(empty, FAN_OPEN_PERM, pid=FOREIGN)
        monitor.handle(ev2)
        assert group.wait_answer(ev2.fd) == [True]
        assert calls == [FOREIGN]
    finally:
        monitor.lane.stop()
    calls.clear()
    other = tmp_path / "d"
    other.mkdir()
    monitor, group, records, f = _monitor(other, detected)
    try:
        ev = event_for(f, FAN_OPEN_PERM, pid=FOREIGN)
        monitor.handle(ev)
        assert group.wait_answer(ev.fd) == [False]
        assert calls == [FOREIGN]
        assert records.event.wait(5) and records.items[0].user == "root"  # read from pid 1 before the answer
    finally:
        monitor.lane.stop()
