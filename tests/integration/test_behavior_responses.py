"""Responses (kill, deny, pause, stop), loss accounting under an exec storm, and bad input."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from behavior_support import Recorder, behave_image, eventually, start
from typer.testing import CliRunner

from hullguard.behavior.ruleset import RuleSet, load_rules
from hullguard.behavior.service import BehaviorService, ServiceOptions
from hullguard.cli.main import app
from hullguard.runtime.docker import DockerMetadata

pytestmark = pytest.mark.integration
__all__ = ["behave_image"]  # the image fixture, shared with the rule tests

MINER = "Crypto miner"
PKG = "Package manager run in container"


def make_service(rules: RuleSet | None = None, **opts: Any) -> tuple[BehaviorService, Recorder, DockerMetadata]:
    recorder = Recorder()
    meta = DockerMetadata()
    svc = BehaviorService(ServiceOptions(**opts), recorder, meta, rules=rules)
    svc.start()
    return svc, recorder, meta


@pytest.fixture
def svc_default() -> Iterator[tuple[BehaviorService, Recorder]]:
    svc, rec, meta = make_service()
    yield svc, rec
    svc.stop()
    meta.close()


def test_deny_after_exec_kills_the_process(docker_client: docker.DockerClient, behave_image: str,
                                           unique_name: str, containers: list[str],
                                           svc_default: tuple[BehaviorService, Recorder]) -> None:
    svc, rec = svc_default
    c = start(docker_client, behave_image, unique_name, containers, svc)
    t0 = time.monotonic()
    result = c.exec_run(["sh", "-c", "sleep 20; : -o stratum+tcp://pool.example:3333"])
    assert time.monotonic() - t0 < 10
    assert result.exit_code == 137  # SIGKILL
    [r, *_] = rec.wait(c.id, MINER)
    assert r.action == "Process killed"
    # the benign process next to it is untouched
    assert c.exec_run(["sh", "-c", "sleep 0.2; echo ok"]).output.strip() == b"ok"


DRIFT = "Drift - binary not from the image executed"


def test_exec_gate_on_a_real_container(docker_client: docker.DockerClient, behave_image: str,
                                       unique_name: str, containers: list[str],
                                       svc_default: tuple[BehaviorService, Recorder]) -> None:
    svc, rec = svc_default
    c = start(docker_client, behave_image, unique_name, containers, svc)
    c.exec_run(["sh", "-c", "cp /bin/busybox /srv/dropped"])
    pid = int(c.attrs["State"]["Pid"])
    assert svc.gate.should_deny(pid, b"/srv/dropped", c.id) is None  # drift is recorded, not denied, by default
    assert svc.gate.should_deny(pid, "/srv/xmrig", c.id) is not None  # miner by name, from the image
    assert {r.detection for r in rec.of(c.id) if r.action == "Blocked"} == {MINER}


def test_exec_gate_denies_drift_when_configured(docker_client: docker.DockerClient, behave_image: str,
                                                unique_name: str, containers: list[str]) -> None:
    rules = load_rules([], include_default=True).with_responses({DRIFT: ["record", "deny"]})
    svc, rec, meta = make_service(rules)
    try:
        _drift_denied(docker_client, behave_image, unique_name, containers, svc, rec)
    finally:
        svc.stop()
        meta.close()


def _drift_denied(docker_client: docker.DockerClient, behave_image: str, unique_name: str,
                  containers: list[str], svc: BehaviorService, rec: Recorder) -> None:
    c = start(docker_client, behave_image, unique_name, containers, svc)
    c.exec_run(["sh", "-c", "cp /bin/busybox /srv/dropped"])
    pid = int(c.attrs["State"]["Pid"])
    match = svc.gate.should_deny(pid, b"/srv/dropped", c.id)
    assert match is not None and match.name.startswith("Drift")
    assert svc.gate.should_deny(pid, b"/bin/busybox", c.id) is None
    assert svc.gate.should_deny(pid, "/srv/xmrig", c.id) is not None  # miner by name, from the image
    blocked = [r for r in rec.of(c.id) if r.action == "Blocked"]
    assert {r.detection for r in blocked} == {DRIFT, MINER}
    assert any(r.object == f"docker://{behave_image}@{c.id}/srv/dropped" for r in blocked)


@pytest.mark.parametrize(("response", "status"), [("pause", "paused"), ("stop", "exited")])
def test_pause_or_stop_the_container(docker_client: docker.DockerClient, behave_image: str, unique_name: str,
                                     containers: list[str], response: str, status: str) -> None:
    rules = load_rules([], include_default=True).with_responses({PKG: ["record", response]})
    svc, rec, meta = make_service(rules)
    try:
        c = start(docker_client, behave_image, unique_name, containers, svc)
        c.exec_run(["/srv/apt-get", "install", "x"], detach=True)
        assert eventually(lambda: c.reload() or c.status == status, 20), c.status
        actions = {r.action for r in rec.of(c.id, PKG)}
        assert "Retained" in actions
        assert eventually(lambda: any(r.action.startswith("Container ") for r in rec.of(c.id, PKG)))
        assert {"Container paused" if response == "pause" else "Container stopped"} <= \
            {r.action for r in rec.of(c.id, PKG)}
    finally:
        svc.stop()
        meta.close()


def test_hostile_command_lines_are_sanitised(docker_client: docker.DockerClient, behave_image: str,
                                             unique_name: str, containers: list[str]) -> None:
    rules = load_rules([], include_default=True).with_responses({MINER: ["record"]})
    svc, rec, meta = make_service(rules)
    try:
        c = start(docker_client, behave_image, unique_name, containers, svc)
        nasty = "\x1b[2J\x07\r" + "A" * 100_000
        c.exec_run(["sh", "-c", f"sleep 0.5; : stratum+tcp://x:1 '{nasty}'", "\x1b]0;title\x07"])
        [r, *_] = rec.wait(c.id, MINER)
        assert "\x1b" not in r.info and "\x07" not in r.info and "\r" not in r.info
        assert "\\x1b[2J" in r.info and len(r.info) < 4000
    finally:
        svc.stop()
        meta.close()


def test_container_stopping_mid_event(docker_client: docker.DockerClient, behave_image: str,
                                      unique_name: str, containers: list[str],
                                      svc_default: tuple[BehaviorService, Recorder]) -> None:
    svc, rec = svc_default
    rules = load_rules([], include_default=True).with_responses({MINER: ["record"]})
    svc._rules = rules  # record only, so the kill below is the container's, not ours
    doomed = start(docker_client, behave_image, unique_name, containers, svc)
    doomed.exec_run(["sh", "-c", "while :; do /bin/true; done"], detach=True)
    time.sleep(0.3)
    doomed.remove(force=True)
    errors = svc.errors
    after = start(docker_client, behave_image, unique_name + "-2", containers, svc)
    after.exec_run(["sh", "-c", "sleep 0.5; : stratum+tcp://x:1"])
    assert rec.wait(after.id, MINER)
    assert svc.errors == errors
    assert doomed.id not in (svc.files.containers() if svc.files else [])


@pytest.mark.slow
def test_exec_storm_nothing_lost_silently(docker_client: docker.DockerClient, behave_image: str,
                                          unique_name: str, containers: list[str]) -> None:
    """3000 short processes: every one is handled, or counted as gone/dropped."""
    svc, _rec, meta = make_service()
    try:
        c = start(docker_client, behave_image, unique_name, containers, svc)
        before = svc.stats()
        n = 3000
        c.exec_run(["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"])
        svc.wait_idle(10)
        time.sleep(0.5)
        after = svc.stats()
        seen = (after["container_execs"] - before["container_execs"]) + \
            (after["unenriched"] - before["unenriched"])
        lost = sum(after[k] - before[k] for k in ("queue_dropped", "kernel_lost"))
        assert seen + lost >= n, (before, after)
        assert after["errors"] == before["errors"]
    finally:
        svc.stop()
        meta.close()


def test_drops_are_counted_and_journaled(docker_client: docker.DockerClient, behave_image: str,
                                         unique_name: str, containers: list[str]) -> None:
    svc, rec, meta = make_service(queue_size=1, warn_interval=0.0)
    try:
        c = start(docker_client, behave_image, unique_name, containers, svc)
        c.exec_run(["sh", "-c", "i=0; while [ $i -lt 1500 ]; do /bin/true & i=$((i+1)); done; wait"])
        svc.wait_idle(10)
        svc.check_losses(force=True)
        assert svc.stats()["queue_dropped"] > 0
        warnings = [r for r in rec.records if r.detection == "Behaviour monitoring lost events"]
        assert warnings and warnings[0].level == "Warning" and "queue_dropped=" in warnings[0].info
    finally:
        svc.stop()
        meta.close()



def test_recorded_events_replay_with_rules_test(docker_client: docker.DockerClient, behave_image: str,
                                                unique_name: str, containers: list[str], tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    rules = load_rules([], include_default=True).with_responses({MINER: ["record"]})
    svc, rec, meta = make_service(rules, record_events=str(events))
    try:
        c = start(docker_client, behave_image, unique_name, containers, svc)
        c.exec_run(["sh", "-c", "sleep 0.5; : stratum+tcp://pool.example:3333"])
        assert rec.wait(c.id, MINER)
    finally:
        svc.stop()
        meta.close()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    mine = [e for e in lines if e.get("container.id") == c.id]
    assert mine and all("evt.type" in e for e in mine)
    only = tmp_path / "mine.jsonl"
    only.write_text("".join(json.dumps(e) + "\n" for e in mine))
    res = CliRunner().invoke(app, ["rules", "test", "--events", str(only)])
    assert res.exit_code == 0, res.output
    assert "Crypto miner [CRITICAL]" in res.output


def test_kill_response(docker_client: docker.DockerClient, behave_image: str, unique_name: str,
                       containers: list[str]) -> None:
    """``kill`` on a rule that only records by default: the matching process dies, nothing else."""
    rules = load_rules([], include_default=True).with_responses({PKG: ["record", "kill"]})
    svc, rec, meta = make_service(rules)
    try:
        c = start(docker_client, behave_image, unique_name, containers, svc)
        t0 = time.monotonic()
        result = c.exec_run(["/srv/apt-get", "install", "x"])  # sleeps 1 s unless killed
        assert result.exit_code == 137 and time.monotonic() - t0 < 5
        [r, *_] = rec.wait(c.id, PKG)
        assert r.action == "Process killed"
        assert c.exec_run(["sh", "-c", "sleep 0.2; echo ok"]).output.strip() == b"ok"
        c.reload()
        assert c.status == "running"
    finally:
        svc.stop()
        meta.close()


def test_events_are_enriched(docker_client: docker.DockerClient, behave_image: str, unique_name: str,
                             containers: list[str], tmp_path: Path) -> None:
    """Container id/name/image, process name, exe, command line, user, tty, parent, ancestors."""
    events = tmp_path / "events.jsonl"
    svc, _rec, meta = make_service(record_events=str(events))
    try:
        c = start(docker_client, behave_image, unique_name, containers, svc)
        # '; :' keeps each shell from exec-ing its last command, so the chain stays sh -> sh -> sleep.
        # The sleep must really sleep: the reader reads /proc after the exec event, and a process
        # gone by then (busybox sleep exits at once on a non-numeric argument) is only counted.
        result = c.exec_run(["sh", "-c", "sh -c 'sleep 0.742; :'; :"], tty=True)
        assert result.exit_code == 0 and result.output == b"", result
        deadline = time.monotonic() + 10  # the reader may still be behind the kernel's queue
        while time.monotonic() < deadline:
            svc.wait_idle(1)
            if '"proc.cmdline":"sleep 0.742"' in events.read_text():
                break
            time.sleep(0.1)
    finally:
        svc.stop()
        meta.close()
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    [ev] = [e for e in seen if e.get("proc.cmdline") == "sleep 0.742" and e.get("container.id") == c.id]
    assert ev["container.name"] == unique_name
    assert ev["container.image"] == behave_image
    assert ev["proc.name"] == "sleep" and ev["proc.exe"] == "/bin/busybox"
    assert ev["proc.argv"] == ["sleep", "0.742"] and ev["proc.args"] == "0.742"
    assert ev["user.uid"] == 0 and ev["user.name"] == "root"
    assert ev["proc.is_tty"] is True and ev["proc.tty"] > 0
    assert ev["proc.pname"] == "sh" and ev["proc.pcmdline"] == "sh -c sleep 0.742; :"
    assert ev["proc.pexe"] == "/bin/busybox"
    assert ev["proc.aname"][:2] == ["sh", "sh"] and ev["proc.vpid"] > 1
    assert ev["proc.exe_upper_layer"] is False and ev["evt.source"] == "proc"


def test_parent_is_the_one_at_the_time_of_the_exec(docker_client: docker.DockerClient, behave_image: str,
                                                   unique_name: str, containers: list[str], tmp_path: Path) -> None:
    """``sh -c 'a && b'``: the shell execs b as soon as a exits. With the rule worker behind (held
    here for a second on a's event), a's proc.pname is still the shell, not b."""
    events = tmp_path / "events.jsonl"
    svc, _rec, meta = make_service(record_events=str(events))
    exec_event = svc.enricher.exec_event

    def behind(info: Any, **kw: Any) -> Any:
        if info.argv == ("sleep", "0.31"):
            time.sleep(1.0)  # meanwhile the reader sees the shell exec "sleep 1.2"
        return exec_event(info, **kw)

    svc.enricher.exec_event = behind  # type: ignore[method-assign]
    try:
        c = start(docker_client, behave_image, unique_name, containers, svc)
        assert c.exec_run(["sh", "-c", "sleep 0.31 && sleep 1.2"]).exit_code == 0
        svc.wait_idle(5)
        time.sleep(0.5)
    finally:
        svc.stop()
        meta.close()
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    [a] = [e for e in seen if e.get("proc.cmdline") == "sleep 0.31"]
    [b] = [e for e in seen if e.get("proc.cmdline") == "sleep 1.2"]
    assert a["proc.pname"] == "sh" and a["proc.pcmdline"] == "sh -c sleep 0.31 && sleep 1.2", a
    assert a["proc.ppid"] == b["proc.pid"]  # the same process: first the shell, then b
