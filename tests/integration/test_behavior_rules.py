"""Every default behaviour rule, triggered in a real busybox container, and a benign near miss.

The service runs for real: proc connector, /proc enrichment, per-container fanotify groups,
Docker metadata. Responses are turned down to ``record`` here (so a kill does not cut a trigger
short); the responses themselves are tested in test_behavior_responses.py.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from behavior_support import BEHAVE_IMAGE, Recorder, behave_image, eventually, remote_peer_latency, start

from hullguard.behavior.ruleset import load_rules
from hullguard.behavior.service import BehaviorService, ServiceOptions
from hullguard.runtime.docker import DockerMetadata

pytestmark = pytest.mark.integration
__all__ = ["behave_image"]  # a fixture, used by name



@pytest.fixture(scope="module")
def service(docker_client: docker.DockerClient) -> Iterator[tuple[BehaviorService, Recorder]]:
    recorder = Recorder()
    rules = load_rules([], include_default=True)
    rules = rules.with_responses({r.name: ["record"] for r in rules.rules})
    meta = DockerMetadata()
    svc = BehaviorService(ServiceOptions(), recorder, meta, rules=rules)
    svc.start()
    yield svc, recorder
    svc.stop()
    meta.close()


def run(c: Any, script: str, *, tty: bool = False) -> None:
    c.exec_run(["sh", "-c", script], tty=tty)


@pytest.fixture
def box(docker_client: docker.DockerClient, behave_image: str, unique_name: str, containers: list[str],
        service: tuple[BehaviorService, Recorder]) -> tuple[Any, Recorder]:
    svc, recorder = service
    return start(docker_client, behave_image, unique_name, containers, svc), recorder


def quiet(recorder: Recorder, cid: str, rule: str, settle: float = 1.5) -> bool:
    time.sleep(settle)
    return not recorder.of(cid, rule)


def test_terminal_shell(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Terminal shell in container"
    run(c, "sleep 0.5; true")
    assert quiet(rec, c.id, rule)
    c.exec_run(["sh", "-c", "sleep 0.5; true"], tty=True)
    [r, *_] = rec.wait(c.id, rule)
    assert r.module == "Behaviour monitoring" and r.object.startswith(f"docker://{BEHAVE_IMAGE}@{c.id}/")
    assert r.container_name == c.name and r.image == BEHAVE_IMAGE and r.level == "Warning"
    assert r.user == "root"


def test_shell_spawned_by_service(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Shell spawned by a non-shell program"
    run(c, "sh -c 'sleep 0.5; true'; true")
    assert quiet(rec, c.id, rule)
    c.exec_run(["/srv/node"])
    [r, *_] = rec.wait(c.id, rule)
    assert "Shell spawned by node" in r.info


def test_drift(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Drift - binary not from the image executed"
    run(c, "/bin/sleep 0.5")
    assert quiet(rec, c.id, rule)
    run(c, "cp /bin/busybox /srv/sleep && /srv/sleep 0.5")
    [r, *_] = rec.wait(c.id, rule)
    assert r.object == f"docker://{BEHAVE_IMAGE}@{c.id}/srv/sleep"


def test_exec_from_tmp(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Execution from /tmp or /dev/shm"
    run(c, "mkdir /tmpx && cp /bin/busybox /tmpx/sleep && /tmpx/sleep 0.5")
    assert quiet(rec, c.id, rule)
    run(c, "cp /bin/busybox /tmp/sleep && /tmp/sleep 0.5")
    [r, *_] = rec.wait(c.id, rule)
    assert r.object.endswith("/tmp/sleep") and r.action == "Retained"


def test_write_below_etc_and_bin(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Write below binary directories or /etc"
    run(c, "echo notes > /root/notes; echo x > /tmp/x")
    assert quiet(rec, c.id, rule)
    run(c, "echo x > /etc/hg.conf")
    [r, *_] = rec.wait(c.id, rule)
    assert r.object.endswith("/etc/hg.conf")
    run(c, "echo x > /bin/hg-tool")
    assert eventually(lambda: any(x.object.endswith("/bin/hg-tool") for x in rec.of(c.id, rule)))


def test_package_manager(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Package manager run in container"
    run(c, "echo apt-get install curl; sleep 0.5")
    assert quiet(rec, c.id, rule)
    c.exec_run(["/srv/apt-get", "install", "curl"])
    [r, *_] = rec.wait(c.id, rule)
    assert "apt-get install curl" in r.info


def _port() -> int:
    return 20000 + secrets.randbelow(20000)


def test_netcat_reverse_shell_and_socket_shell(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    nc_rule = "Netcat or socat reverse shell"
    sock_rule = "Shell with stdin or stdout on a network socket"
    port = _port()
    # near misses: plain nc to a listener in the same container, a shell reading a pipe
    run(c, f"(sleep 2 | nc -l -p {port} 127.0.0.1 >/dev/null &); sleep 0.3; echo hi | nc -w 1 127.0.0.1 {port}; "
           "echo 'sleep 0.3' | sh")
    assert quiet(rec, c.id, nc_rule) and quiet(rec, c.id, sock_rule, 0)
    port = _port()
    remote_peer_latency(c, port)  # nc lives for a round trip before it becomes the shell, as it does for real
    run(c, f"(sleep 4 | nc -l -p {port} 127.0.0.1 >/dev/null &); sleep 0.3; nc 127.0.0.1 {port} -e /bin/sh")
    [r, *_] = rec.wait(c.id, nc_rule)
    assert "-e /bin/sh" in r.info
    [s, *_] = rec.wait(c.id, sock_rule)
    assert "stdin=tcp" in s.info


def test_crypto_miner(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Crypto miner"
    run(c, "sleep 0.5; : stratum-notes xmr")
    assert quiet(rec, c.id, rule)
    run(c, "sleep 0.5; : -o stratum+tcp://pool.example:3333")
    assert rec.wait(c.id, rule)
    before = len(rec.of(c.id, rule))
    c.exec_run(["/srv/xmrig"])
    assert eventually(lambda: len(rec.of(c.id, rule)) > before)


def test_shadow_read(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Read of /etc/shadow by a non-login program"
    run(c, "cat /etc/passwd > /dev/null; cat /etc/group > /dev/null")
    assert quiet(rec, c.id, rule)
    # a reader that stays a moment, so the record can name it: a ``cat`` that exits within
    # microseconds may be gone before its exec is read, and the record then names what ran
    # under its pid before (the shell); docs/rules.md, "processes gone before they were read"
    run(c, "tail -f /etc/shadow > /dev/null & p=$!; sleep 1; kill $p")
    [r, *_] = rec.wait(c.id, rule)
    assert r.object.endswith("/etc/shadow") and "process=tail" in r.info


def test_symlink_over_sensitive_file(box: tuple[Any, Recorder]) -> None:
    c, rec = box
    rule = "Symlink created over a sensitive file"
    run(c, "ln -s /etc/hostname /tmp/h")
    assert quiet(rec, c.id, rule)
    run(c, "ln -s /etc/shadow /tmp/s")
    [r, *_] = rec.wait(c.id, rule)
    assert "target=/etc/shadow" in r.info and r.object.endswith("/tmp/s")


def test_docker_socket(docker_client: docker.DockerClient, behave_image: str, unique_name: str,
                       containers: list[str], service: tuple[BehaviorService, Recorder]) -> None:
    svc, rec = service
    rule = "Docker socket used from a container"
    plain = start(docker_client, behave_image, unique_name + "-plain", containers, svc)
    plain.exec_run(["/srv/docker", "ps"])
    assert quiet(rec, plain.id, rule)
    mounted = start(docker_client, behave_image, unique_name + "-sock", containers, svc,
                    volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "ro"}})
    mounted.exec_run(["sh", "-c", "ls / > /dev/null; sleep 0.3"])
    assert quiet(rec, mounted.id, rule)
    mounted.exec_run(["/srv/docker", "ps"])
    [r, *_] = rec.wait(mounted.id, rule)
    assert r.level == "Error"


def test_release_agent_and_core_pattern(docker_client: docker.DockerClient, behave_image: str,
                                        unique_name: str, containers: list[str],
                                        service: tuple[BehaviorService, Recorder]) -> None:
    svc, rec = service
    rule = "Write to release_agent or core_pattern"
    # what an escape needs, short of --privileged (which this host's dockerd cannot grant):
    # mount(2), and a writable /proc/sys
    cid = subprocess.run(["docker", "create", "--network", "none", "--name", unique_name,
                          "--cap-add", "SYS_ADMIN", "--security-opt", "systempaths=unconfined",
                          "--security-opt", "apparmor=unconfined", behave_image, "sleep", "300"],
                         check=True, capture_output=True, text=True).stdout.strip()
    containers.append(cid)
    c = docker_client.containers.get(cid)
    c.start()
    assert eventually(lambda: svc.files is not None and cid in svc.files.containers())
    run(c, "cat /proc/sys/kernel/core_pattern > /dev/null; sleep 0.3")
    assert quiet(rec, c.id, rule)
    # a named cgroup v1 hierarchy of our own: no controllers, no children, so its release
    # agent can never run; it disappears with the unmount
    hierarchy = "hgt" + secrets.token_hex(3)
    run(c, f"mkdir -p /tmp/cg && mount -t cgroup -o none,name={hierarchy} cgroup /tmp/cg && "
           "echo /bin/true > /tmp/cg/release_agent; umount /tmp/cg")
    assert rec.wait(c.id, rule)
    core = Path("/proc/sys/kernel/core_pattern")
    current = core.read_text()
    if len(current) < 100:  # write the value it already has back (no change on the host)
        before = len(rec.of(c.id, rule))
        c.exec_run(["/srv/same-core"])
        assert eventually(lambda: any(r.object.endswith("/proc/sys/kernel/core_pattern")
                                       and r.event == "Event occurred on a modified file."
                                       for r in rec.of(c.id, rule)[before:]))
        assert core.read_text() == current
