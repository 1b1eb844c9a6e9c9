"""`hullguard agent` with behaviour monitoring on: an execution denied through real-time protection's
permission events, the match journaled, a bad rule file refused at start with its line."""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from agent_support import Agent, classic_build, new_agent
from behavior_support import eventually

from hullguard.journal.record import DetectionRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DENY_DRIFT = '[behavior.responses]\n"Drift - binary not from the image executed" = ["record", "deny"]\n'


def behaviour_config(extra: str = "", *, behavior: str | None = "enabled = true\n",
                     responses: str = DENY_DRIFT) -> str:
    """An agent's ``[behavior]`` section: ``behavior`` is its body, ``extra`` and ``responses``
    follow; left out when ``behavior`` is None (the shipped defaults, behaviour monitoring on)."""
    return "" if behavior is None else "[behavior]\n" + behavior + extra + responses


def behaviour_agent(agents: list[Agent], base: Path, extra: str = "", **kw: str | None) -> Agent:
    """A started agent with no host paths and one scan worker (see ``behaviour_config``)."""
    return new_agent(agents, base, [], workers=1, extra=behaviour_config(extra, **kw))  # type: ignore[arg-type]


def monitored(agent: Agent) -> list[DetectionRecord]:
    """The agent's behaviour monitoring records."""
    return agent.records(module="Behaviour monitoring")


def test_drift_exec_is_denied_before_it_runs(docker_client: docker.DockerClient, busybox_image: str,
                                            unique_name: str, containers: list[str], agents: list[Agent],
                                            tmp_path: Path) -> None:
    c = docker_client.containers.create(busybox_image, ["sleep", "300"], name=unique_name, network_mode="none")
    containers.append(c.id)
    c.start()
    agent = behaviour_agent(agents, tmp_path / "agent")
    ok = c.exec_run(["sh", "-c", "/bin/echo image-binary-runs"])
    assert ok.exit_code == 0 and b"image-binary-runs" in ok.output
    denied = c.exec_run(["sh", "-c", "cp /bin/busybox /root/echo && /root/echo dropped-binary-ran"])
    assert b"dropped-binary-ran" not in denied.output
    assert denied.exit_code == 126 and b"operation not permitted" in denied.output.lower(), denied.output

    def blocked() -> list[DetectionRecord]:
        return [r for r in monitored(agent) if r.container_id == c.id and r.action == "Blocked"]

    assert eventually(lambda: blocked(), 15), agent.errors()
    rec = blocked()[0]
    assert rec.detection == "Drift - binary not from the image executed"
    assert rec.object == f"docker://{busybox_image}@{c.id}/root/echo"
    assert rec.event == "Event occurred on executing a file."


def test_bad_rule_file_stops_the_start_with_its_line(tmp_path: Path, agents: list[Agent]) -> None:
    rules = tmp_path / "site.yaml"
    rules.write_text("- rule: Mine\n  condition: evt.type = execve and proc.nmae = x\n")
    agent = Agent(tmp_path / "agent", [], workers=1, extra=behaviour_config(f'rules_files = ["{rules}"]\n'))
    out = subprocess.run(agent.cli("agent"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True, timeout=60)
    assert out.returncode == 100
    assert f"{rules}:2:36: unknown field 'proc.nmae'" in out.stderr.decode(), out.stderr


def _exec(c: docker.models.containers.Container, script: str) -> tuple[int, str]:
    res = c.exec_run(["sh", "-c", script])
    return res.exit_code, res.output.decode(errors="replace")


def test_default_config_leaves_normal_container_use_alone(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    """No [behavior] section: monitoring is on, drift and /tmp executions are recorded (not
    denied), and only high-confidence rules (a miner here) deny, through the permission event."""
    agent = behaviour_agent(agents, tmp_path / "agent", behavior=None)
    run = subprocess.run(["docker", "run", "--rm", "--name", unique_name + "-run", "--network", "none",
                          busybox_image, "sh", "-c", "echo hi"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == "hi\n", run.stderr
    c = docker_client.containers.create(busybox_image, ["sleep", "300"], name=unique_name, network_mode="none")
    containers.append(c.id)
    c.start()
    assert _exec(c, "/bin/echo ok; ls /bin > /dev/null && id -u") == (0, "ok\n0\n")
    assert c.exec_run(["/bin/cat", "/etc/passwd"]).exit_code == 0
    # programs that live a little (0.3 s): the proc connector path reads /proc after the exec,
    # and a process that is gone by then is only counted (docs/rules.md)
    assert _exec(c, "cp /bin/busybox /root/sleep && /root/sleep 0.3 && echo drift-ran") == (0, "drift-ran\n")
    assert _exec(c, "cp /bin/busybox /tmp/sleep && /tmp/sleep 0.3 && echo tmp-ran") == (0, "tmp-ran\n")
    _, out = _exec(c, "cp /bin/busybox /root/xmrig && /root/xmrig; echo rc=$?")
    assert "rc=126" in out and "operation not permitted" in out.lower(), out

    def mine() -> list[DetectionRecord]:
        return [r for r in monitored(agent) if r.container_id == c.id]

    def named(rule: str) -> list[DetectionRecord]:
        return [r for r in mine() if r.detection == rule]

    assert eventually(lambda: named("Crypto miner") and named("Execution from /tmp or /dev/shm")
                      and any(r.object.endswith("/root/sleep") for r in named(DRIFT)), 15), \
        ([(r.detection, r.action, r.object) for r in mine()], agent.errors())
    assert {r.action for r in named(DRIFT)} == {"Retained"}
    assert {r.action for r in named("Execution from /tmp or /dev/shm")} == {"Retained"}
    [miner] = named("Crypto miner")
    assert miner.action == "Blocked" and miner.object == f"docker://{busybox_image}@{c.id}/root/xmrig"
    assert miner.event == "Event occurred on executing a file."


DRIFT = "Drift - binary not from the image executed"
NC = "Netcat or socat reverse shell"


def test_reverse_shell_on_loopback_is_denied_before_the_shell_runs(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    """``nc 127.0.0.1 PORT -e /bin/sh`` on loopback is sh microseconds after it starts, often too
    fast for the proc connector path to read nc. The exec gate reads nc while the kernel holds
    its execve of the shell, matches the default reverse-shell rule and refuses the exec."""
    agent = behaviour_agent(agents, tmp_path / "agent", behavior=None)
    c = docker_client.containers.create(busybox_image, ["sleep", "300"], name=unique_name, network_mode="none")
    containers.append(c.id)
    c.start()
    port = 20000 + secrets.randbelow(20000)
    _, out = _exec(c, f"(sleep 3 | nc -l -p {port} 127.0.0.1 > /dev/null &); sleep 0.5; "
                       f"nc 127.0.0.1 {port} -e /bin/sh; echo rc=$?")
    # while the gate holds nc, the proc connector path may read it too and kill it: either way
    # the shell does not run, and the execution is journaled once
    assert "rc=0" not in out and ("operation not permitted" in out.lower() or "rc=137" in out), out

    def blocked() -> list[DetectionRecord]:
        return [r for r in monitored(agent) if r.container_id == c.id and r.detection == NC]

    assert eventually(blocked, 15), ([(r.detection, r.action) for r in monitored(agent)], agent.errors())
    [rec] = blocked()
    assert rec.action in ("Blocked", "Process killed") and f"127.0.0.1 {port} -e /bin/sh" in rec.info
    assert rec.object == f"docker://{busybox_image}@{c.id}/bin/busybox"
    # the shell never ran, so nothing had a shell on the socket
    assert not [r for r in monitored(agent) if r.container_id == c.id
                and r.detection == "Shell with stdin or stdout on a network socket"]


def test_image_build_runs_what_it_writes_with_the_default_config(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, agents: list[Agent],
        built_images: list[str], tmp_path: Path) -> None:
    """A classic-builder build whose RUN steps write a program and a script and run them (in the
    same step and in a later one) succeeds under the agent: the drift is recorded, nothing denied."""
    agent = behaviour_agent(agents, tmp_path / "agent", behavior=None)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_image}\n"
        "RUN mkdir -p /opt && cp /bin/busybox /opt/sleep && printf '#!/bin/sh\\necho script-ran-$1\\n' > /opt/hello.sh"
        " && chmod +x /opt/hello.sh && /opt/sleep 0.3 && echo tool-ran-1 && /opt/hello.sh 1\n"
        "RUN /opt/sleep 0.3 && echo tool-ran-2 && /opt/hello.sh 2 && cp /bin/busybox /tmp/sleep"
        " && /tmp/sleep 0.3 && echo tmp-ran\n")
    base_id = docker_client.images.get(busybox_image).id
    proc = classic_build(ctx, f"{unique_name}:drift", built_images, base_id)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for text in ("tool-ran-1", "script-ran-1", "tool-ran-2", "script-ran-2", "tmp-ran"):
        assert text in proc.stdout, proc.stdout
    step1, step2 = re.findall(r"---> Running in ([0-9a-f]{12})", proc.stdout)

    def of(short: str) -> list[DetectionRecord]:
        return [r for r in monitored(agent) if r.container_id.startswith(short)]

    assert eventually(lambda: any(r.detection == DRIFT and r.object.endswith("/opt/sleep") for r in of(step1))
                      and any(r.object.endswith("/tmp/sleep") for r in of(step2)), 15), \
        ([(r.detection, r.action, r.object) for r in of(step1) + of(step2)], agent.errors())
    assert all(r.action == "Retained" for r in of(step1) + of(step2)), [(r.detection, r.action) for r in of(step1)]
    # /opt/sleep comes from the image in the second step: not drift there
    assert not any(r.detection == DRIFT and r.object.endswith("/opt/sleep") for r in of(step2))


def test_sighup_with_invalid_rules_keeps_the_last_good_set(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    rules = tmp_path / "site.yaml"

    def marker(n: str) -> str:
        return (f"- rule: Site marker {n}\n"
                f"  condition: evt.type = execve and container and proc.cmdline contains hg-marker-{n}\n"
                f"  output: marker {n} %proc.cmdline\n  priority: NOTICE\n")

    rules.write_text(marker("one"))
    agent = behaviour_agent(agents, tmp_path / "agent", f'rules_files = ["{rules}"]\n', behavior="", responses="")
    assert agent.proc is not None
    c = docker_client.containers.create(busybox_image, ["sleep", "300"], name=unique_name, network_mode="none")
    containers.append(c.id)
    c.start()

    def count(rule: str) -> int:
        return sum(1 for r in monitored(agent) if r.container_id == c.id and r.detection == rule)

    c.exec_run(["sh", "-c", "sleep 0.3; true hg-marker-one"])
    assert eventually(lambda: count("Site marker one") == 1, 15), agent.errors()

    rules.write_text(marker("two").replace("proc.cmdline contains", "proc.cmdlnie contains"))
    agent.proc.send_signal(signal.SIGHUP)
    warned = "Behaviour rules not reloaded; last good rule set kept"
    assert eventually(lambda: any(r.detection == warned for r in monitored(agent)), 15), agent.errors()
    [warning] = [r for r in monitored(agent) if r.detection == warned]
    assert warning.level == "Warning" and f"{rules}:2:" in warning.info and "proc.cmdlnie" in warning.info
    assert agent.proc.poll() is None
    c.exec_run(["sh", "-c", "sleep 0.3; true hg-marker-one; true hg-marker-two"])
    assert eventually(lambda: count("Site marker one") == 2, 15)  # the last good set is in force

    rules.write_text(marker("two"))
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(2)  # the agent's main loop picks the signal up within a second
    c.exec_run(["sh", "-c", "sleep 0.3; true hg-marker-one; true hg-marker-two"])
    assert eventually(lambda: count("Site marker two") == 1, 15), agent.errors()
    assert count("Site marker one") == 2  # replaced by the good file


TMP = "Execution from /tmp or /dev/shm"


def test_dropped_scripts_and_short_lived_binaries_are_recorded_once(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    """Default config (drift and /tmp only record). A ``#!`` script's path is seen only by the exec
    gate (the proc connector shows the interpreter); a binary that exits at once is gone before
    /proc is read. Both are recorded, by the gate; a binary seen by both paths is recorded once
    per execution."""
    c = docker_client.containers.create(busybox_image, ["sleep", "300"], name=unique_name, network_mode="none")
    containers.append(c.id)
    c.start()
    agent = behaviour_agent(agents, tmp_path / "agent", behavior=None)
    assert _exec(c, "printf '#!/bin/sh\\necho script-ran\\n' > /root/hello.sh && chmod +x /root/hello.sh"
                    " && /root/hello.sh") == (0, "script-ran\n")
    assert _exec(c, "printf '#!/bin/sh\\necho tmp-script-ran\\n' > /tmp/t.sh && chmod +x /tmp/t.sh"
                    " && /tmp/t.sh") == (0, "tmp-script-ran\n")
    assert _exec(c, "cp /bin/busybox /root/true && /root/true && /root/true && echo ok") == (0, "ok\n")
    assert _exec(c, "cp /bin/busybox /root/sleep && /root/sleep 0.4 && /root/sleep 0.4 && echo ok") == (0, "ok\n")

    def at(rule: str, path: str) -> list[DetectionRecord]:
        return [r for r in monitored(agent) if r.container_id == c.id and r.detection == rule
                and r.object == f"docker://{busybox_image}@{c.id}{path}"]

    assert eventually(lambda: at(DRIFT, "/root/hello.sh") and at(TMP, "/tmp/t.sh")
                      and len(at(DRIFT, "/root/true")) == 2 and len(at(DRIFT, "/root/sleep")) == 2, 15), \
        ([(r.detection, r.action, r.object) for r in monitored(agent)], agent.errors())
    time.sleep(1.5)  # the proc connector path has long seen /root/sleep: nothing more may come
    assert len(at(DRIFT, "/root/hello.sh")) == 1 and len(at(TMP, "/tmp/t.sh")) == 1
    assert len(at(DRIFT, "/root/true")) == 2 and len(at(DRIFT, "/root/sleep")) == 2
    mine = [r for r in monitored(agent) if r.container_id == c.id]
    assert {r.action for r in mine} == {"Retained"}, [(r.detection, r.action) for r in mine]
    assert at(DRIFT, "/root/hello.sh")[0].event == "Event occurred on executing a file."
    # the interpreter comes from the image: no drift for it
    assert not any(r.detection == DRIFT and r.object.endswith("/bin/busybox") for r in mine)


def test_counters_are_written_and_shown_by_status(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    """<run_dir>/agent.stats.json is rewritten while the agent runs; `hullguard status` shows it."""
    agent = behaviour_agent(agents, tmp_path / "agent", behavior=None)
    stats_file = agent.run_dir / "agent.stats.json"
    c = docker_client.containers.create(busybox_image, ["sleep", "300"], name=unique_name, network_mode="none")
    containers.append(c.id)
    c.start()
    assert _exec(c, "i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done; echo ok") == (0, "ok\n")

    def stats() -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(stats_file.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def seen() -> int:  # /bin/true is often gone before its /proc entry is read: counted too
        bh = stats().get("behavior", {})
        return int(bh.get("container_execs", 0)) + int(bh.get("gone_before_read", 0))

    assert eventually(lambda: seen() >= 20 and stats().get("realtime", {}).get("events", 0) > 0, 15), \
        (stats(), agent.errors())
    data = stats()
    assert data["pid"] == json.loads((agent.run_dir / "agent.ready").read_text())["pid"]
    assert set(data["behavior"]["dropped"]) == {"kernel_lost", "kernel_overruns", "queue", "file_overflows"}
    assert "gone_before_read" in data["behavior"] and "matches" in data["behavior"]
    assert {"cache_hits", "timeouts", "queue_overflows"} <= set(data["realtime"])
    cmd = agent.cli("status")
    res = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)["agent"]["stats"]
    assert shown["behavior"]["events"] >= data["behavior"]["events"] > 0
    table = " ".join(subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.split())
    assert "Behaviour " in table and "gone before read" in table and "queue overflows" in table, table
    agent.stop()
    assert not stats_file.exists()
