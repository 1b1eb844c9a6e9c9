"""Real-time protection while Docker itself misbehaves: dockerd restarts, a container dies mid-scan.

These run against a dockerd of their own (own data root, exec root, pid file, socket and
managed containerd under a temporary directory; a bridge of its own, no iptables; a short shutdown
timeout), so restarting it never disturbs the machine's daemon that other tests use. The
agent is pointed at it with ``DOCKER_HOST``; it learns the data root (and so which overlays
are containers) from ``docker info`` and every ``MergedDir`` from ``docker inspect``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from agent_support import EICAR_SHA1, Agent, new_agent, uri
from harness import private_bridge

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class OwnDockerd:
    root: Path
    name: str
    bridge: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _logs: list[object] = field(default_factory=list)

    @property
    def sock(self) -> Path:
        return self.root / "d.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def cli(self, *args: str, timeout: float = 120, stdin: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["docker", "-H", self.host, *args], capture_output=True, timeout=timeout,
                              input=stdin)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "dockerd.log").read_text(errors="replace")[-3000:]
        return ""

    def start(self) -> None:
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "x"),
             "--pidfile", str(self.root / "d.pid"), "-H", self.host, f"--bridge={self.bridge}", "--iptables=false",
             "--ip-masq=false", "--shutdown-timeout=2", "--containerd-namespace", f"{self.name}-moby",
             "--containerd-plugins-namespace", f"{self.name}-plugins", "--log-level=warn"],
            stdout=log, stderr=log, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"test dockerd exited with {self.proc.returncode}: {self.log()}")
            if self.sock.exists() and self.cli("version", timeout=20).returncode == 0:
                return
            time.sleep(0.3)
        pytest.fail(f"test dockerd not up within 60 s: {self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> float:
        began = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - began

    def close_logs(self) -> None:
        for f in self._logs:
            with contextlib.suppress(Exception):
                f.close()  # type: ignore[attr-defined]


def _mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(str(path) + "/")), key=len, reverse=True)


def _kill_own_containerd(root: Path) -> None:
    """The managed containerd exits with dockerd; if it did not, end it by its pid file."""
    pidfile = root / "x" / "containerd" / "containerd.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if str(root).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def dockerd(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[OwnDockerd]:
    root = Path(tempfile.mkdtemp(prefix="hgr-", dir="/tmp"))  # short: socket paths have 108 bytes
    with private_bridge() as bridge:
        yield from _run_dockerd(OwnDockerd(root, f"hgtest-{secrets.token_hex(4)}", bridge), busybox_image)


def _run_dockerd(d: OwnDockerd, busybox_image: str) -> Iterator[OwnDockerd]:
    root = d.root
    try:
        d.start()
        image = subprocess.run(["docker", "save", busybox_image], capture_output=True, check=True,
                               timeout=120).stdout
        loaded = d.cli("load", stdin=image)
        assert loaded.returncode == 0, loaded.stderr
        yield d
    finally:
        with contextlib.suppress(Exception):
            if d.proc is not None and d.proc.poll() is None:
                ids = d.cli("ps", "-aq", timeout=30).stdout.split()
                if ids:
                    d.cli("rm", "-f", *[i.decode() for i in ids], timeout=60)
        d.stop()
        _kill_own_containerd(root)
        d.close_logs()
        for m in _mounts_below(root):
            subprocess.run(["umount", "-l", m], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def run(d: OwnDockerd, name: str) -> str:
    out = d.cli("run", "-d", "--name", name, "--network", "none", "hullguard-test/busybox:latest", "sleep", "600")
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().strip()


def dexec(d: OwnDockerd, cid: str, script: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return d.cli("exec", "-i", cid, "sh", "-c", script, stdin=stdin, timeout=60)


def assert_retained(agent: Agent, cid: str, path: str) -> None:
    rec = agent.wait_record(lambda r: r.object == uri(cid, path), timeout=15)
    assert rec.action == "Retained" and rec.sha1 == EICAR_SHA1 and rec.container_id == cid, rec
    assert rec.image == "hullguard-test/busybox:latest"


def test_dockerd_restart_while_the_agent_runs(
        dockerd: OwnDockerd, agents: list[Agent], tmp_path: Path, eicar: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    before = run(dockerd, f"{dockerd.name}-before")
    agent = new_agent(agents, tmp_path / "a", [])
    assert any(m["container"] == before for m in agent.ready["marks"]), agent.ready  # type: ignore[index, union-attr]
    assert dexec(dockerd, before, "cat > /tmp/eicar.com", eicar).returncode == 0
    assert_retained(agent, before, "/tmp/eicar.com")

    took = dockerd.restart()
    print(f"\ntest dockerd restarted in {took:.1f} s (its containers stopped with it)")
    assert agent.proc is not None and agent.proc.poll() is None, agent.errors()

    after = run(dockerd, f"{dockerd.name}-after")
    started = time.monotonic()
    assert dexec(dockerd, after, "cat > /tmp/eicar.com", eicar).returncode == 0
    assert_retained(agent, after, "/tmp/eicar.com")
    print(f"container started after the restart: detection recorded {time.monotonic() - started:.2f} s "
          "after its exec started")
    # the container started before the restart comes back under protection when it is started again
    assert dockerd.cli("start", before).returncode == 0
    assert dexec(dockerd, before, "cat > /tmp/eicar2.com", eicar).returncode == 0
    assert_retained(agent, before, "/tmp/eicar2.com")
    assert agent.proc.poll() is None
    assert "Traceback" not in agent.errors(), agent.errors()


def test_container_killed_and_removed_while_its_file_is_being_scanned(
        dockerd: OwnDockerd, agents: list[Agent], tmp_path: Path, eicar: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)
    cid = run(dockerd, f"{dockerd.name}-mid")
    agent = new_agent(agents, tmp_path / "a", [])
    for pid in agent.workers:  # every scan now hangs in the worker, as on a very large file
        os_kill(pid, signal.SIGSTOP)
    reader: subprocess.Popen[bytes] | None = None
    try:
        assert dexec(dockerd, cid, "cat > /tmp/mid.com", eicar).returncode == 0  # close-write: queued scan
        reader = subprocess.Popen(["docker", "-H", dockerd.host, "exec", cid, "cat", "/tmp/mid.com"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)  # the reader's open now waits for the scan
        assert dockerd.cli("rm", "-f", cid).returncode == 0  # killed and its filesystem removed
        reader.wait(timeout=30)
    finally:
        for pid in agent.workers:
            os_kill(pid, signal.SIGCONT)
        if reader is not None and reader.poll() is None:
            reader.kill()
    # the scan finishes on the open file of the vanished container: recorded, nothing crashed
    rec = agent.wait_record(lambda r: r.object == uri(cid, "/tmp/mid.com") and r.kind.value == "detection",
                            timeout=30)
    assert rec.sha1 == EICAR_SHA1 and rec.action == "Retained" and rec.container_id == cid
    assert agent.proc is not None and agent.proc.poll() is None
    assert "Traceback" not in agent.errors(), agent.errors()
    # and the agent goes on protecting new containers of this daemon
    nxt = run(dockerd, f"{dockerd.name}-next")
    assert dexec(dockerd, nxt, "cat > /tmp/e.com", eicar).returncode == 0
    assert_retained(agent, nxt, "/tmp/e.com")


def os_kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
