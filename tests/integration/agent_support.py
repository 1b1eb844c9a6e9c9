"""``hullguard agent`` as a subprocess for the integration tests, and the pieces its tests share.

Each agent has its own configuration, state and run directory under a test's temporary
directory, so several can run on one machine (other test sessions' agents included). It is
ready when ``<run_dir>/agent.ready`` exists (written atomically once every mark is in place);
its journal is read with a read-only store while it runs. The fixtures that make and stop
agents, mount a private tmpfs and remove built images are in conftest.py.

A "detected script" is a harmless shell script whose MD5 is put into the agent's signature
directory, so it would really run if it were not blocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import docker
import pytest

from hullguard.agent import stats as agent_stats
from hullguard.journal.record import DetectionRecord
from hullguard.journal.store import JournalStore

HULLGUARD = Path(sys.executable).parent / "hullguard"
BAD_SCRIPT = b"#!/bin/sh\necho hullguard-test-bad-script-ran\n"
GOOD_SCRIPT = b"#!/bin/sh\necho hullguard-test-good-script-ran\n"
BAD_NAME = "Hullguard.Test.BadScript"
EICAR_SHA1 = "3395856CE81F2B7382DEE72602F798B642F14140"


class Agent:
    """One ``hullguard agent`` subprocess; ``extra`` is appended to the ``[realtime]`` section
    (keys of its own first, then any further sections)."""

    def __init__(self, base: Path, host_paths: list[str], *, deadline: float = 2.0, workers: int = 2,
                 extra: str = "") -> None:
        self.base = base
        self.state = base / "state"
        self.run_dir = base / "run"
        sigs = base / "sigs"
        sigs.mkdir(parents=True, exist_ok=True)
        (sigs / "test.hdb").write_text(
            f"{hashlib.md5(BAD_SCRIPT).hexdigest()}:{len(BAD_SCRIPT)}:{BAD_NAME}\n")
        self.config = base / "config.toml"
        self.config.write_text(
            f'run_dir = "{self.run_dir}"\n'
            f'[engine]\nsignature_dirs = ["{sigs}"]\n'
            f"[realtime]\nhost_paths = {json.dumps(host_paths)}\ndeadline = {deadline}\nworkers = {workers}\n"
            + extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        self.ready: dict[str, object] = {}

    def cli(self, *args: str) -> list[str]:
        """A ``hullguard`` command line with this agent's state directory and configuration."""
        return [str(HULLGUARD), "--state-dir", str(self.state), "--config", str(self.config), *args]

    def start(self, timeout: float = 60.0) -> None:
        self.stderr = open(self.base / "agent.err", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cli("agent"), stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)
        ready = self.run_dir / "agent.ready"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited with {self.proc.returncode}: {self.errors()}")
            if ready.exists():
                self.ready = json.loads(ready.read_text())
                return
            time.sleep(0.1)
        pytest.fail(f"agent not ready within {timeout} s: {self.errors()}")

    def errors(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base / "agent.err").read_text(errors="replace")[-3000:]
        return ""

    @property
    def workers(self) -> list[int]:
        pids = self.ready.get("workers", [])
        assert isinstance(pids, list)
        return [int(p) for p in pids]

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 20 s); returns the exit code, None when it was not started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        if self.stderr is not None:
            self.stderr.close()
        for pid in self.workers:  # they die with the agent; make sure of it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None
        return code

    def records(self, **filters: object) -> list[DetectionRecord]:
        """The journal's records (``JournalStore.query`` filters); none while it does not exist."""
        path = self.state / "journal.db"
        if not path.exists():
            return []
        store = JournalStore.open(path, readonly=True)
        try:
            return store.query(**filters)  # type: ignore[arg-type]
        finally:
            store.close()

    def wait_record(self, predicate: Callable[[DetectionRecord], object], timeout: float = 10.0
                    ) -> DetectionRecord:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for r in self.records():
                if predicate(r):
                    return r
            time.sleep(0.02)
        pytest.fail(f"no matching journal record within {timeout} s; have {self.records()}; "
                    f"agent counters: {agent_stats.read(self.run_dir)}; agent log: {self.errors()}; "
                    f"agent threads: {self.threads()}")

    def threads(self) -> str:
        """Where each of the agent's threads waits, for the message of a failed test: the
        kernel's wait channel and stack of every thread, and Python stacks when py-spy is
        installed (``pip install py-spy``; not a dependency)."""
        if self.proc is None or self.proc.poll() is not None:
            return f"agent exited with {self.proc.returncode if self.proc else None}"
        lines = []
        for task in sorted(Path(f"/proc/{self.proc.pid}/task").iterdir(), key=lambda p: int(p.name)):
            with contextlib.suppress(OSError):
                comm = (task / "comm").read_text().strip()
                wchan = (task / "wchan").read_text().strip()
                stack = " < ".join(ln.split()[1] for ln in (task / "stack").read_text().splitlines()[:6]
                                   if len(ln.split()) > 1)
                lines.append(f"{task.name} {comm} wchan={wchan} [{stack}]")
        spy = shutil.which("py-spy")
        if spy is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run([spy, "dump", "--pid", str(self.proc.pid)], capture_output=True,
                                     text=True, timeout=30)
                lines.append(out.stdout + out.stderr)
        return "\n".join(lines)


def new_agent(made: list[Agent], base: Path, host_paths: list[str], **kw: object) -> Agent:
    """An agent registered in ``made`` (the ``agents`` fixture stops it) before it is started."""
    a = Agent(base, host_paths, **kw)  # type: ignore[arg-type]
    made.append(a)
    a.start()
    return a


def run_container(client: docker.DockerClient, image: str, name: str, made: list[str]) -> str:
    """Created, registered for removal, then started: a start that fails leaves nothing behind."""
    c = client.containers.create(image, ["sleep", "600"], name=name)
    made.append(c.id)
    c.start()
    return str(c.id)


def dexec(container_id: str, script: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", "exec", "-i", container_id, "sh", "-c", script],
                          input=stdin or b"", capture_output=True, timeout=60)


def uri(cid: str, path: str) -> str:
    """The object URI of ``path`` in a container of the busybox test image."""
    return f"docker://hullguard-test/busybox:latest@{cid}{path}"


@contextlib.contextmanager
def tmpfs_at(mnt: Path, size: str = "64m") -> Iterator[Path]:
    """A tmpfs mounted on the new directory ``mnt``, lazily unmounted afterwards."""
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "hgtest", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def classic_build(context: Path, tag: str, made: list[str], base_id: str) -> subprocess.CompletedProcess[str]:
    """``docker build`` with the classic builder (``RUN`` steps are ordinary containers).

    Every image the build made (the intermediate ones too, not the base ``base_id``) and, when
    it succeeded, ``tag`` are appended to ``made`` (the ``built_images`` fixture removes them).
    """
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    proc = subprocess.run(["docker", "build", "--no-cache", "--force-rm", "-t", tag, str(context)],
                          capture_output=True, text=True, env=env, timeout=300)
    for image_id in re.findall(r"---> ([0-9a-f]{12})\b", proc.stdout + proc.stderr):
        if not base_id.startswith(f"sha256:{image_id}"):
            made.append(image_id)
    if proc.returncode == 0:
        made.append(tag)
    return proc
