"""Real-time protection, continued: quarantine policy, SIGHUP reloads, bad input, scheduled scans.

Same harness as test_realtime.py (agent_support.Agent as a subprocess, host protection on the
``tmpfs`` fixture's mount). The Docker cases are in test_realtime_dockerd.py (a dockerd of their own).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from agent_support import BAD_SCRIPT, EICAR_SHA1, GOOD_SCRIPT, Agent, new_agent

from hullguard.journal.record import RecordKind

pytestmark = [pytest.mark.integration]

CRAFTED = b"hullguard integration test: harmless content that a reloaded signature names\n"
CRAFTED_NAME = "Hullguard.Test.Reloaded"


def alive(agent: Agent) -> bool:
    return agent.proc is not None and agent.proc.poll() is None


def quarantine_list(agent: Agent) -> list[dict[str, object]]:
    out = subprocess.run(agent.cli("quarantine", "list", "--format", "json"), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data, list)
    return data


def test_host_quarantine_policy_denies_then_quarantines(
        tmpfs: Path, agents: list[Agent], tmp_path: Path, eicar: bytes) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)], extra='[response]\nhost = "quarantine"\n')
    target = tmpfs / "eicar.com"
    target.write_bytes(eicar)
    written = time.monotonic()
    rec = agent.wait_record(lambda r: r.object == f"file://{target}" and r.module.startswith("Real-time"))
    took = time.monotonic() - written
    print(f"\nclose-to-quarantine record {took * 1000:.0f} ms")
    assert rec.action == "Quarantined", rec
    assert rec.sha1 == EICAR_SHA1 and "Quarantine ID" in rec.info
    assert not target.exists()
    entries = quarantine_list(agent)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["sha1"] == EICAR_SHA1 and str(entry["id"]) in rec.info
    # the quarantine module journals its own record of the move
    agent.wait_record(lambda r: r.module == "Quarantine" and r.action == "Quarantined")
    # a detected script: quarantined after the close that wrote it; a clean one runs
    bad = tmpfs / "bad.sh"
    bad.write_bytes(BAD_SCRIPT)
    rec = agent.wait_record(lambda r: r.object == f"file://{bad}" and r.module.startswith("Real-time"))
    assert rec.action == "Quarantined" and not bad.exists()
    good = tmpfs / "good.sh"
    good.write_bytes(GOOD_SCRIPT)
    good.chmod(0o755)
    out = subprocess.run([str(good)], capture_output=True, timeout=30)
    assert out.returncode == 0 and b"good-script-ran" in out.stdout
    assert len(quarantine_list(agent)) == 2
    assert alive(agent)


def test_sighup_reloads_signatures_and_a_bad_file_keeps_the_old_ones(
        tmpfs: Path, agents: list[Agent], tmp_path: Path) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)], extra='[response]\nhost = "block"\n')
    assert agent.proc is not None
    crafted = tmpfs / "crafted.txt"
    crafted.write_bytes(CRAFTED)
    for _ in range(2):  # scanned clean, then answered from the kernel's ignore mark
        assert crafted.read_bytes() == CRAFTED
    sigs = agent.base / "sigs"
    (sigs / "reload.hsb").write_text(f"{hashlib.sha256(CRAFTED).hexdigest()}:{len(CRAFTED)}:{CRAFTED_NAME}\n")
    sent = time.monotonic()
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_record(lambda r: r.module == "Agent" and "signatures reloaded" in r.info, timeout=60)
    print(f"\nreload took {time.monotonic() - sent:.2f} s")
    with pytest.raises(PermissionError):  # the unchanged file, cleared before, is now detected
        crafted.read_bytes()
    rec = agent.wait_record(lambda r: r.detection == CRAFTED_NAME)
    assert rec.action == "Blocked" and rec.object == f"file://{crafted}"
    # a broken signature file: error logged and journaled, the loaded signatures stay
    (sigs / "broken.hsb").write_text("not a hash signature\n")
    agent.proc.send_signal(signal.SIGHUP)
    bad = agent.wait_record(lambda r: r.module == "Agent" and "reload failed" in r.info, timeout=60)
    assert "broken.hsb" in bad.info and bad.level == "Error"
    assert "broken.hsb" in agent.errors()
    assert alive(agent)
    other = tmpfs / "crafted2.txt"
    other.write_bytes(CRAFTED)
    agent.wait_record(lambda r: r.detection == CRAFTED_NAME and r.object == f"file://{other}")
    with pytest.raises(PermissionError):
        other.read_bytes()


def test_huge_sparse_file_is_answered_in_time_and_reported_too_large(
        tmpfs: Path, agents: list[Agent], tmp_path: Path) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)])
    big = tmpfs / "huge.img"
    with open(big, "wb") as f:
        f.truncate(2 << 30)  # 2 GiB, no blocks: the tmpfs is 64 MiB
    start = time.monotonic()
    with open(big, "rb") as f:  # waits for the scan started by the close, or for the deadline
        assert f.read(16) == b"\0" * 16
    took = time.monotonic() - start
    rec = agent.wait_record(lambda r: r.object == f"file://{big}", timeout=30)
    print(f"\n2 GiB sparse file: open answered after {took:.2f} s; {rec.info}")
    assert took < 2.5  # deadline 2 s
    assert rec.kind is RecordKind.NOT_SCANNED
    assert "too large" in rec.info or "timeout" in rec.info
    if "too large" not in rec.info:  # the deadline came first: the scan still ends, bounded
        agent.wait_record(lambda r: r.object == f"file://{big}" and "too large" in r.info, timeout=60)
    start = time.monotonic()
    with open(big, "rb") as f:  # the outcome stays true until the file changes: cached
        f.read(1)
    assert time.monotonic() - start < 0.5
    assert alive(agent)


def test_short_lived_writers_are_recorded_after_they_exited(
        tmpfs: Path, agents: list[Agent], tmp_path: Path, eicar: bytes) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)])
    paths = [tmpfs / f"short{i}.com" for i in range(20)]
    for p in paths:
        subprocess.run(["sh", "-c", f"cat > {p}"], input=eicar, check=True, timeout=30)
    end = time.monotonic() + 20
    got: dict[str, object] = {}
    while time.monotonic() < end and len(got) < len(paths):
        got = {r.object: r for r in agent.records() if r.object.startswith(f"file://{tmpfs}/short")}
        time.sleep(0.1)
    assert len(got) == len(paths), (sorted(got), agent.errors())
    assert all(getattr(r, "action", "") == "Cleaned by deleting" for r in got.values())
    assert not any(p.exists() for p in paths)
    # most writers exit before their close-write is read; the open they did first (a permission
    # event, while they waited for the answer) still names them
    processes = {getattr(r, "process", "") for r in got.values()}
    print(f"\nwriters named as {processes}")
    assert "" not in processes and all(p.endswith(("sh", "dash", "bash", "cat", "busybox")) for p in processes)
    assert all(getattr(r, "user", "") == "root" for r in got.values())
    assert alive(agent)
    assert "Traceback" not in agent.errors()


@pytest.mark.slow
def test_scheduled_scan_runs_in_the_agent_and_its_workers_are_not_scanned(
        tmpfs: Path, agents: list[Agent], tmp_path: Path, eicar: bytes) -> None:
    """Retain policy: real-time denies every open of a detected file, so a scheduled scan's worker
    can only read it (and report the detection, not "permission denied") because the monitor
    recognises it as the agent's own descendant."""
    target = tmpfs / "sched"
    target.mkdir()
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)], extra=(
        '[response]\nhost = "retain"\n'
        f'[schedule.jobs.every_minute]\ncron = "* * * * *"\ntargets = ["{target}"]\n'))
    eicar_file = target / "eicar.com"
    eicar_file.write_bytes(eicar)
    agent.wait_record(lambda r: r.object == f"file://{eicar_file}" and r.module.startswith("Real-time"))
    with pytest.raises(PermissionError):
        eicar_file.read_bytes()
    started = time.monotonic()
    rec = agent.wait_record(lambda r: r.module == "On-demand scan" and r.object == f"file://{eicar_file}",
                            timeout=75)
    print(f"\nscheduled scan record {time.monotonic() - started:.1f} s after the agent was ready")
    assert rec.kind is RecordKind.DETECTION and rec.sha1 == EICAR_SHA1, rec
    assert rec.action == "Retained" and "schedule every_minute" in rec.user
    assert eicar_file.exists()
    out = subprocess.run(agent.cli("log", "--scans", "--format", "json"), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    sessions = json.loads(out.stdout)
    assert any(s.get("detections") == 1 and str(target) in json.dumps(s.get("targets")) for s in sessions), \
        sessions
    # real time recorded the write and this test's one denied read, nothing from the scan's worker
    events = sorted(r.event for r in agent.records()
                    if r.module.startswith("Real-time") and r.object == f"file://{eicar_file}")
    assert events == ["Event occurred on a newly created file.", "Event occurred on opening a file."], events
    assert alive(agent)
