"""Stand-ins for the monitor's unit tests: a recording fanotify group, a record collector, events.

The fanotify group is replaced by an object that records answers and ignore marks, and the
scan pool runs a Python function (``make``), so the deadline, cache, dedup and policy paths
run without privileges. Shared by every tests/unit/realtime module that drives a Monitor.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

from hullguard.engine.verdict import Detection, ScanOutcome, Verdict
from hullguard.journal.record import DetectionRecord
from hullguard.realtime.fanotify import FAN_OPEN_PERM, EventMetadata
from hullguard.realtime.monitor import Monitor, MonitorSettings
from hullguard.realtime.pool import ThreadScanPool

NO_SUCH_PID = 2**22 + 777  # above pid_max: a process that "already exited"
EICARISH = Detection("Eicar", "Test file", tags="@NAME=Eicar@TYPE=Teststring@SUSP=inf")


class FakeGroup:
    def __init__(self) -> None:
        self.fd = 10**6
        self.answers: dict[int, list[bool]] = {}
        self.ignored: list[int] = []
        self.ignore_masks: list[int] = []
        self.flushes = 0
        self.cond = threading.Condition()

    def respond(self, fd: int, allow: bool, audit: bool = False) -> None:
        with self.cond:
            self.answers.setdefault(fd, []).append(allow)
            self.cond.notify_all()

    def ignore(self, fd: int, mask: int) -> None:
        self.ignored.append(fd)
        self.ignore_masks.append(mask)

    def flush_ignores(self) -> None:
        self.flushes += 1

    def unignore(self, fd: int, mask: int) -> None:
        self.ignored.remove(fd)

    def mark_filesystem(self, fd: int, mask: int) -> None:
        pass

    def wait_answer(self, fd: int, timeout: float = 5.0) -> list[bool]:
        end = time.monotonic() + timeout
        with self.cond:
            while fd not in self.answers and time.monotonic() < end:
                self.cond.wait(0.05)
            return self.answers.get(fd, [])


class Records:
    def __init__(self) -> None:
        self.items: list[DetectionRecord] = []
        self.event = threading.Event()

    def __call__(self, factory: object) -> None:
        record = factory()  # type: ignore[operator]
        if record is not None:
            self.items.append(record)
            self.event.set()


def make(scan: object, tmp_path: Path, **settings: object) -> tuple[Monitor, FakeGroup, Records]:
    group = FakeGroup()
    records = Records()
    pool = ThreadScanPool(scan, workers=2, max_queue=int(settings.pop("max_queue", 16)))  # type: ignore[arg-type, call-overload]
    pool.start()
    monitor = Monitor(group, pool, records, MonitorSettings(**settings))  # type: ignore[arg-type]
    monitor.watchdog.start()
    return monitor, group, records


_next_fd = itertools.count(700)


def event_for(path: Path, mask: int = FAN_OPEN_PERM, pid: int = NO_SUCH_PID) -> EventMetadata:
    """An event whose fd number is never reused in this session, so answers can be told apart."""
    fd = os.open(path, os.O_RDONLY)
    unique = os.dup2(fd, next(_next_fd))
    os.close(fd)
    return EventMetadata(mask=mask, fd=unique, pid=pid)


def write_and_handle(monitor: Monitor, path: Path, data: bytes, mask: int = FAN_OPEN_PERM,
                     pid: int = NO_SUCH_PID) -> EventMetadata:
    """Write ``data`` to ``path``, hand the monitor an event for it and return that event."""
    path.write_bytes(data)
    ev = event_for(path, mask, pid)
    monitor.handle(ev)
    return ev


def detected(fd: int, size: int) -> ScanOutcome:
    """A scan that finds the EICAR-like test detection in anything."""
    return ScanOutcome((Verdict.detected(EICARISH, "AB" * 20),))


def never_scan(fd: int, size: int) -> ScanOutcome:
    """A scan for paths that must be answered without one: fails the test if it runs."""
    raise AssertionError("scanned")
