"""Quarantine by the monitor, the agent-descendant exclusion, reloads, and bad input on the answer path.

Same stand-ins as test_realtime_monitor.py (monitor_support.py: a recording fanotify group, a
thread pool running a Python function); the reload test starts real scan worker processes (no
privileges needed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from monitor_support import NO_SUCH_PID, FakeGroup, detected, event_for, make, never_scan, write_and_handle

from hullguard.agent.config import EngineConfig
from hullguard.engine.verdict import ScanOutcome
from hullguard.realtime.fanotify import FAN_CLOSE_WRITE, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM
from hullguard.realtime.lineage import Lineage, stat_of
from hullguard.realtime.pool import PoolError, ProcessScanPool, ScanJob
from hullguard.response.policy import PolicyConfig, Remedy
from hullguard.response.quarantine import QuarantineEntry, QuarantineStore, make_handler


def _kill(pid: int) -> None:
    if pid <= 1:  # 0 and -1 would mean a whole group or every process
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --- lineage -------------------------------------------------------------------------------------
def test_children_and_grandchildren_descend_others_do_not() -> None:
    lineage = Lineage(os.getpid())
    # a shell (child) that starts a sleep (grandchild) and prints its pid
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline() or 0)
        assert lineage.descends(proc.pid)
        assert lineage.descends(grandchild)
        assert not lineage.descends(1)
        assert not lineage.descends(NO_SUCH_PID)
        assert not lineage.descends(os.getppid())  # our parent is an ancestor, not a descendant
        reads = lineage.reads
        assert lineage.descends(grandchild)  # cached: one /proc read to check the start time
        assert lineage.reads == reads + 1
    finally:
        _kill(grandchild)
        proc.kill()
        proc.wait()


def test_a_younger_process_under_a_reused_pid_is_not_taken_for_the_old_one() -> None:
    me = stat_of(os.getpid())
    assert me is not None
    lineage = Lineage(os.getpid())
    proc = subprocess.Popen(["sleep", "30"])
    try:
        st = stat_of(proc.pid)
        assert st is not None and st[0] == os.getpid() and st[1] >= me[1]
        assert lineage.descends(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not lineage.descends(proc.pid)  # gone: never "ours" by a stale entry


def test_events_of_an_agent_grandchild_are_answered_without_a_scan(tmp_path: Path) -> None:
    monitor, group, _ = make(never_scan, tmp_path)
    f = tmp_path / "own"
    f.write_bytes(b"x")
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline() or 0)
        ev = event_for(f, FAN_OPEN_PERM, pid=grandchild)
        monitor.handle(ev)
        assert group.answers[ev.fd] == [True]
        assert monitor.stats.own == 1 and monitor.stats.scans == 0
    finally:
        _kill(grandchild)
        proc.kill()
        proc.wait()


# --- quarantine ----------------------------------------------------------------------------------
def test_quarantine_policy_denies_first_then_quarantines_and_records(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "q")
    monitor, group, records = make(detected, tmp_path, policy=PolicyConfig(host=Remedy.QUARANTINE))
    monitor._quarantine = make_handler(store)
    monitor.background.start()
    f = tmp_path / "bad.exe"
    ev = write_and_handle(monitor, f, b"bad content", FAN_OPEN_EXEC_PERM)
    assert group.wait_answer(ev.fd) == [False]
    assert records.event.wait(5)
    rec = records.items[0]
    assert rec.action == "Quarantined", rec
    assert "Quarantine ID" in rec.info and rec.object == f"file://{f}"
    assert not f.exists()
    entries = store.list()
    assert len(entries) == 1
    entry = entries[0]
    assert isinstance(entry, QuarantineEntry) and entry.detection == "Eicar"
    assert entry.id in rec.info
    assert b"".join(store.content(entry.id)) == b"bad content"
    monitor.background.stop()


def test_quarantine_that_cannot_be_done_keeps_the_file_and_says_why(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "q", max_size=4)  # smaller than the file
    monitor, _, records = make(detected, tmp_path, policy=PolicyConfig(host=Remedy.QUARANTINE))
    monitor._quarantine = make_handler(store)
    monitor.background.start()
    f = tmp_path / "bad"
    write_and_handle(monitor, f, b"bad content", FAN_CLOSE_WRITE)
    assert records.event.wait(5)
    rec = records.items[0]
    assert rec.action == "Cleaning failed" and "size limit" in rec.info
    assert f.read_bytes() == b"bad content"
    monitor.background.stop()


def test_quarantine_without_a_store_blocks(tmp_path: Path) -> None:
    monitor, group, records = make(detected, tmp_path, policy=PolicyConfig(host=Remedy.QUARANTINE))
    f = tmp_path / "bad"
    ev = write_and_handle(monitor, f, b"x")
    assert group.wait_answer(ev.fd) == [False]
    assert records.event.wait(3)
    assert records.items[0].action == "Blocked" and f.exists()


# --- reload --------------------------------------------------------------------------------------
class FlushingGroup(FakeGroup):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush_ignores(self) -> None:
        self.flushes += 1
        self.ignored.clear()


def test_flush_forgets_kernel_and_user_space_verdicts(tmp_path: Path) -> None:
    monitor, _, _ = make(lambda fd, size: ScanOutcome(), tmp_path)
    group = FlushingGroup()
    monitor.fan = group  # type: ignore[assignment]
    f = tmp_path / "ok"
    ev = write_and_handle(monitor, f, b"x")
    assert group.wait_answer(ev.fd) == [True]
    time.sleep(0.05)
    assert len(monitor.cache) == 1 and group.ignored
    monitor.flush_cached_verdicts()
    assert len(monitor.cache) == 0 and group.flushes == 1 and not group.ignored


def test_a_verdict_of_the_old_signatures_is_not_cached_in_the_kernel(tmp_path: Path) -> None:
    holder: dict[str, object] = {}

    def scan(fd: int, size: int) -> ScanOutcome:
        holder["pool"].db_version = "new"  # type: ignore[attr-defined]  # reloaded during the scan
        return ScanOutcome()

    monitor, group, _ = make(scan, tmp_path)
    holder["pool"] = monitor.pool
    f = tmp_path / "ok"
    ev = write_and_handle(monitor, f, b"x")
    assert group.wait_answer(ev.fd) == [True]
    time.sleep(0.05)
    assert ev.fd not in group.ignored


def _sigdir(tmp_path: Path, line: str) -> Path:
    d = tmp_path / "sigs"
    d.mkdir(exist_ok=True)
    (d / "test.hsb").write_text(line)
    return d


def _scan(pool: ProcessScanPool, path: Path) -> ScanOutcome:
    import threading

    done = threading.Event()
    got: list[ScanOutcome] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pool.submit(ScanJob(fd, path.stat().st_size, lambda job, out: (got.append(out), done.set())))
        assert done.wait(60)
    finally:
        os.close(fd)
    return got[0]


def test_pool_reload_loads_new_signatures_and_keeps_the_old_on_a_bad_file(tmp_path: Path) -> None:
    import hashlib

    crafted = tmp_path / "crafted.bin"
    crafted.write_bytes(b"hullguard unit test crafted content\n")
    sigs = _sigdir(tmp_path, "")
    pool = ProcessScanPool(EngineConfig(signature_dirs=(str(sigs),)), workers=1)
    pool.start()
    try:
        assert not _scan(pool, crafted).detections
        old_pids, old_db = pool.pids(), pool.db_version
        (sigs / "test.hsb").write_text("this is not a signature\n")
        with pytest.raises(PoolError, match=r"test\.hsb"):
            pool.reload()
        assert pool.db_version == old_db and pool.pids() == old_pids
        assert not _scan(pool, crafted).detections  # the old engine still answers
        sha = hashlib.sha256(crafted.read_bytes()).hexdigest()
        (sigs / "test.hsb").write_text(f"{sha}:{crafted.stat().st_size}:Hullguard.Test.Crafted\n")
        pool.reload()
        assert pool.db_version != old_db and not (pool.pids() & old_pids)
        out = _scan(pool, crafted)
        assert [v.detection.name for v in out.detections if v.detection] == ["Hullguard.Test.Crafted"]
        for pid in old_pids:  # the retired worker is gone
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    finally:
        pool.stop()


# --- bad input on the answering path -------------------------------------------------------------
def test_unreadable_file_is_allowed_and_reported_not_scanned(tmp_path: Path) -> None:
    def unreadable(fd: int, size: int) -> ScanOutcome:
        raise OSError(errno.EIO, "Input/output error")

    monitor, group, records = make(unreadable, tmp_path)
    f = tmp_path / "x"
    ev = write_and_handle(monitor, f, b"x")
    assert group.wait_answer(ev.fd) == [True]
    assert records.event.wait(3)
    assert records.items[0].action == "Not scanned" and "Input/output error" in records.items[0].info


def test_engine_reports_a_file_it_cannot_read_as_unreadable(tmp_path: Path) -> None:
    from hullguard.engine.engine import Engine

    f = tmp_path / "w"
    f.write_bytes(b"data")
    fd = os.open(f, os.O_WRONLY)  # reads fail with EBADF
    try:
        out = Engine.load().scan_fd(fd)
    finally:
        os.close(fd)
    assert [v.reason.value for v in out.not_scanned if v.reason] == ["unreadable"]


def test_event_of_a_process_that_already_exited_is_recorded(tmp_path: Path) -> None:
    monitor, _, records = make(detected, tmp_path, policy=PolicyConfig(host=Remedy.RETAIN))
    f = tmp_path / "written"
    write_and_handle(monitor, f, b"x", FAN_CLOSE_WRITE, pid=NO_SUCH_PID)
    assert records.event.wait(3)
    rec = records.items[0]
    assert rec.action == "Retained" and rec.object == f"file://{f}"
    assert rec.user == "" and rec.process == ""  # who it was cannot be known any more


def test_a_process_seen_alive_is_still_named_after_it_exited(tmp_path: Path) -> None:
    from hullguard.realtime.context import RecentProcesses, resolve

    recent = RecentProcesses()
    f = tmp_path / "f"
    f.write_bytes(b"x")
    st = f.stat()
    proc = subprocess.Popen(["sleep", "30"])
    try:
        alive_ctx = resolve(proc.pid, st, os.fsencode(f), None, recent)  # its open: it waits for us
        assert alive_ctx.exe.endswith("sleep") and alive_ctx.uid == os.getuid()
    finally:
        proc.kill()
        proc.wait()
    gone = resolve(proc.pid, st, os.fsencode(f), None, recent)  # its close-write, read too late
    assert gone.exe == alive_ctx.exe and gone.uid == alive_ctx.uid
    assert resolve(proc.pid, st, os.fsencode(f), None, RecentProcesses(ttl=0)).exe in ("", alive_ctx.exe)
    assert resolve(NO_SUCH_PID, st, os.fsencode(f), None, recent).exe == ""


def test_a_destroyed_container_is_still_named_for_a_while() -> None:
    from hullguard.runtime.docker import ContainerInfo, DockerMetadata

    meta = DockerMetadata(client_factory=lambda: (_ for _ in ()).throw(AssertionError("no Docker here")))
    info = ContainerInfo("c" * 64, "web", "nginx:1", "sha256:x", "/m", "/u", 1, True)
    meta.update(info)
    meta.forget(info.id)  # destroyed while a record about it is still being built
    assert meta.cached(info.id) == info and meta.get(info.id) == info
    meta.linger = 0.0
    time.sleep(0.01)
    meta.forget("d" * 64)  # any later forget drops what lingered long enough
    assert meta.cached(info.id) is None
