"""Real-time protection against the real kernel and the real Docker engine.

The agent runs as a subprocess (`hullguard agent`, agent_support.Agent) with its own state and
run directory. Host protection is tested on a tmpfs this test mounts itself (the ``tmpfs``
fixture), so the filesystem mark covers a filesystem only the test uses. A "detected script"
is a harmless shell script whose MD5 is put into a signature file for the run, so it would
really run if it were not blocked.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest
from agent_support import (
    BAD_NAME,
    BAD_SCRIPT,
    EICAR_SHA1,
    GOOD_SCRIPT,
    HULLGUARD,
    Agent,
    dexec,
    new_agent,
    run_container,
    uri,
)

from hullguard.journal.record import RecordKind

pytestmark = [pytest.mark.integration]

def write_eicar_and_measure(agent: Agent, cid: str, eicar: bytes, path: str = "/tmp/eicar.com") -> float:
    proc = dexec(cid, f"cat > {path}", eicar)
    written = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    rec = agent.wait_record(lambda r: r.object == uri(cid, path))
    latency = time.monotonic() - written
    assert rec.action == "Retained"
    assert rec.sha1 == EICAR_SHA1
    assert rec.module == "Real-time file system protection"
    assert rec.container_id == cid
    assert rec.image == "hullguard-test/busybox:latest"
    assert rec.event == "Event occurred on a newly created file."
    assert rec.kind is RecordKind.DETECTION
    return latency


def test_containers_started_before_and_while_running_are_protected_and_after_restart(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path, eicar: bytes) -> None:
    before = run_container(docker_client, busybox_image, f"{unique_name}-before", containers)
    agent = new_agent(agents, tmp_path / "a1", [])
    latency_before = write_eicar_and_measure(agent, before, eicar)
    during = run_container(docker_client, busybox_image, f"{unique_name}-during", containers)
    latency_during = write_eicar_and_measure(agent, during, eicar)
    print(f"\nclose-to-record latency: container started before {latency_before * 1000:.0f} ms, "
          f"started while running {latency_during * 1000:.0f} ms")
    assert latency_before < 1.0 and latency_during < 1.0  # issue 3: recorded within 1 s
    assert agent.stop() == 0
    # after a restart protection resumes (same journal)
    agent2 = new_agent(agents, tmp_path / "a1", [])
    write_eicar_and_measure(agent2, during, eicar, "/tmp/eicar2.com")


def test_executing_a_detected_script_in_a_container_is_denied_and_the_file_stays(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    cid = run_container(docker_client, busybox_image, unique_name, containers)
    agent = new_agent(agents, tmp_path / "a", [])
    good = dexec(cid, "cat > /tmp/good.sh && chmod +x /tmp/good.sh && /tmp/good.sh", GOOD_SCRIPT)
    assert good.returncode == 0 and b"good-script-ran" in good.stdout, good.stderr
    assert dexec(cid, "cat > /tmp/bad.sh && chmod +x /tmp/bad.sh", BAD_SCRIPT).returncode == 0
    bad = dexec(cid, "/tmp/bad.sh")
    assert bad.returncode != 0
    assert b"bad-script-ran" not in bad.stdout
    assert re.search(rb"denied|not permitted", bad.stderr, re.I), bad.stderr
    still = dexec(cid, "stat -c %s /tmp/bad.sh")  # opening it is denied too (open_perm)
    assert still.stdout.strip() == str(len(BAD_SCRIPT)).encode()  # retained: not ours to change
    denied = dexec(cid, "cat /tmp/bad.sh")
    assert denied.returncode != 0 and BAD_SCRIPT not in denied.stdout
    rec = agent.wait_record(lambda r: r.object == uri(cid, "/tmp/bad.sh")  # behaviour's drift record is another
                            and r.module == "Real-time file system protection"
                            and r.event == "Event occurred on executing a file.")
    assert rec.detection == BAD_NAME and rec.action == "Retained"
    assert rec.process in ("/bin/busybox", "/bin/sh")  # the shell that tried to exec it
    assert rec.user == "root"


def test_host_detected_file_is_cleaned_and_clean_files_work(
        tmpfs: Path, agents: list[Agent], tmp_path: Path, eicar: bytes) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)])
    eicar_file = tmpfs / "eicar.com"
    eicar_file.write_bytes(eicar)
    written = time.monotonic()
    rec = agent.wait_record(lambda r: r.object == f"file://{eicar_file}")
    print(f"\nhost close-to-record latency {(time.monotonic() - written) * 1000:.0f} ms")
    assert rec.action == "Cleaned by deleting" and rec.sha1 == EICAR_SHA1
    assert not eicar_file.exists()
    good = tmpfs / "good.sh"
    good.write_bytes(GOOD_SCRIPT)
    good.chmod(0o755)
    for _ in range(3):  # first run scanned, then cached
        out = subprocess.run([str(good)], capture_output=True, timeout=30)
        assert out.returncode == 0 and b"good-script-ran" in out.stdout
    assert good.read_bytes() == GOOD_SCRIPT
    bad = tmpfs / "bad.sh"
    bad.write_bytes(BAD_SCRIPT)
    agent.wait_record(lambda r: r.object == f"file://{bad}" and r.action == "Cleaned by deleting")
    assert not bad.exists()


def test_open_of_a_detected_file_is_denied_on_a_blocking_host_policy(
        tmpfs: Path, agents: list[Agent], tmp_path: Path) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)], extra='[response]\nhost = "block"\n')
    bad = tmpfs / "bad.sh"
    bad.write_bytes(BAD_SCRIPT)
    bad.chmod(0o755)
    agent.wait_record(lambda r: r.object == f"file://{bad}")
    with pytest.raises(PermissionError):
        bad.read_bytes()
    with pytest.raises(PermissionError):
        subprocess.run([str(bad)], capture_output=True, timeout=30)
    assert bad.exists()


def _stop_workers(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        os.kill(pid, sig)


def test_scan_past_the_deadline_is_allowed_and_recorded(
        tmpfs: Path, agents: list[Agent], tmp_path: Path) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)], deadline=1.0)
    target = tmpfs / "slow.txt"
    target.write_bytes(b"some text\n")
    time.sleep(0.5)  # scanned once and cached; write a new version so the next open scans again
    _stop_workers(agent.workers, signal.SIGSTOP)  # every scan now hangs
    try:
        target.write_bytes(b"other text\n")
        start = time.monotonic()
        out = subprocess.run(["cat", str(target)], capture_output=True, timeout=30)
        took = time.monotonic() - start
    finally:
        _stop_workers(agent.workers, signal.SIGCONT)
    assert out.returncode == 0 and out.stdout == b"other text\n"
    print(f"\nopen answered after {took:.2f} s with a 1 s deadline")
    assert 0.8 <= took < 3.0
    rec = agent.wait_record(lambda r: r.kind is RecordKind.NOT_SCANNED and "timeout" in r.info)
    assert rec.object == f"file://{target}"


def test_sigkill_of_the_agent_releases_a_waiting_process(
        tmpfs: Path, agents: list[Agent], tmp_path: Path) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)], deadline=60.0,
                      extra="hard_timeout = 120.0\n")
    target = tmpfs / "waiting.txt"
    target.write_bytes(b"first\n")
    time.sleep(0.5)  # scanned and cached, so rewriting it below does not block this test
    _stop_workers(agent.workers, signal.SIGSTOP)
    target.write_bytes(b"payload\n")
    waiter = subprocess.Popen(["cat", str(target)], stdout=subprocess.PIPE)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=1.5)  # blocked on the agent's answer
        assert agent.proc is not None
        killed = time.monotonic()
        agent.proc.kill()
        assert waiter.wait(timeout=10) == 0
        released = time.monotonic() - killed
        print(f"\nwaiting process released {released * 1000:.0f} ms after SIGKILL")
        assert released < 5.0
        assert waiter.stdout is not None and waiter.stdout.read() == b"payload\n"
    finally:
        if waiter.poll() is None:
            waiter.kill()
        _stop_workers_quietly(agent.workers)


def _stop_workers_quietly(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_refuses_to_run_without_root_and_without_fanotify_explains(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n')
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(HULLGUARD),
         "--state-dir", str(tmp_path / "st"), "--config", str(cfg), "agent"],
        capture_output=True, timeout=60)
    assert out.returncode == 100
    assert b"must run as root" in out.stderr
