"""Policy actions in both scopes: block only, retain, clean, quarantine, for host files and for
files in a container's layer (a filesystem marked as a container overlay).

Same stand-ins as test_realtime_monitor.py (monitor_support.py). A container overlay is simulated by registering
the test directory's filesystem as a container target, so the file's path inside the
"container" is its path below that directory, and cleaning happens below that root only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from monitor_support import detected, event_for, make

from hullguard.engine.verdict import ScanOutcome
from hullguard.realtime.fanotify import FAN_CLOSE_WRITE, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM
from hullguard.realtime.marks import MarkTarget
from hullguard.realtime.monitor import Monitor
from hullguard.response.policy import PolicyConfig, Remedy

CID = "c" * 64


def as_container(monitor: Monitor, root: Path) -> None:
    dev = root.stat().st_dev
    monitor.marks._targets[dev] = MarkTarget("container", dev, str(root), CID)


# remedy -> (expected answer to the permission event, action, file still there)
CASES = {
    Remedy.BLOCK: (False, "Blocked", True),
    Remedy.RETAIN: (False, "Retained", True),
    Remedy.CLEAN: (False, "Cleaned by deleting", False),
    Remedy.QUARANTINE: (False, "Blocked", True),  # no quarantine store given: denied, kept
    Remedy.REPORT: (True, "Retained", True),
}


@pytest.mark.parametrize("scope", ["host", "container"])
@pytest.mark.parametrize("remedy", list(CASES))
def test_each_remedy_in_each_scope(tmp_path: Path, scope: str, remedy: Remedy) -> None:
    policy = PolicyConfig(host=remedy) if scope == "host" else PolicyConfig(container=remedy)
    monitor, group, records = make(detected, tmp_path, policy=policy)
    root = tmp_path / "merged"
    (root / "tmp").mkdir(parents=True)
    f = root / "tmp" / "bad"
    f.write_bytes(b"bad")
    if scope == "container":
        as_container(monitor, root)
    ev = event_for(f, FAN_OPEN_EXEC_PERM)
    monitor.handle(ev)
    allow, action, stays = CASES[remedy]
    assert group.wait_answer(ev.fd) == [allow]
    assert records.event.wait(3)
    rec = records.items[0]
    assert rec.action == action
    assert f.exists() is stays
    assert rec.event == "Event occurred on executing a file."
    if scope == "container":
        assert rec.object == f"docker://@{CID}/tmp/bad"  # no Docker here to name the image
        assert rec.container_id == CID
    else:
        assert rec.object == f"file://{f}"


def test_the_default_policy_retains_in_containers_and_cleans_on_the_host(tmp_path: Path) -> None:
    monitor, group, records = make(detected, tmp_path)
    root = tmp_path / "merged"
    root.mkdir()
    inside = root / "bad"
    inside.write_bytes(b"bad")
    as_container(monitor, root)
    ev = event_for(inside, FAN_OPEN_PERM)
    monitor.handle(ev)
    assert group.wait_answer(ev.fd) == [False]
    assert records.event.wait(3)
    assert records.items[0].action == "Retained" and inside.exists()
    assert records.items[0].event == "Event occurred on opening a file."


def test_close_write_event_text(tmp_path: Path) -> None:
    monitor, _, records = make(detected, tmp_path, policy=PolicyConfig(host=Remedy.RETAIN))
    f = tmp_path / "new"
    f.write_bytes(b"bad")
    monitor.handle(event_for(f, FAN_CLOSE_WRITE))
    assert records.event.wait(3)
    assert records.items[0].event == "Event occurred on a newly created file."


@pytest.mark.parametrize("remedy", [Remedy.CLEAN, Remedy.RETAIN])
def test_a_file_that_vanished_before_the_scan_is_still_scanned_and_recorded(
        tmp_path: Path, remedy: Remedy) -> None:
    """The event's fd keeps the file readable; the record names the path it had."""
    seen: list[bytes] = []

    def scan(fd: int, size: int) -> ScanOutcome:
        seen.append(os.pread(fd, 16, 0))
        return detected(fd, size)

    monitor, group, records = make(scan, tmp_path, policy=PolicyConfig(host=remedy))
    f = tmp_path / "gone"
    f.write_bytes(b"bad content")
    ev = event_for(f, FAN_OPEN_PERM)
    f.unlink()  # gone before the monitor reads the event
    monitor.handle(ev)
    assert group.wait_answer(ev.fd) == [False]
    assert records.event.wait(3)
    rec = records.items[0]
    assert seen == [b"bad content"]
    assert rec.object == f"file://{f}"  # without the kernel's " (deleted)" suffix
    assert rec.action == ("Cleaned by deleting" if remedy is Remedy.CLEAN else "Retained")
