"""Shared pieces of the behaviour integration tests: the test image, a record collector, waits."""

from __future__ import annotations

import io
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from hullguard.behavior.service import BehaviorService
from hullguard.journal.record import DetectionRecord

BEHAVE_IMAGE = "hullguard-test/busybox-behaviour:latest"
SCRIPTS = {
    # a "service" that starts a shell (as a web server running a command would)
    "srv/node": b"#!/bin/sh\nsh -c 'sleep 1; true'\n",
    "srv/apt-get": b"#!/bin/sh\nsleep 1\n",
    "srv/xmrig": b"#!/bin/sh\nsleep 1\n",
    "srv/docker": b"#!/bin/sh\nsleep 1\n",
    # restores core_pattern to the value it already has, without naming it on a command line
    "srv/same-core": b"#!/bin/sh\nf=/proc/sys/kernel/core\nv=$(cat ${f}_pattern)\necho \"$v\" > ${f}_pattern\n",
    "etc/shadow": b"root:*:19000:0:99999:7:::\n",
}


class Recorder:
    """Collects the service's journal records; waits for the ones of one container."""

    def __init__(self) -> None:
        self.records: list[DetectionRecord] = []
        self._lock = threading.Lock()

    def __call__(self, factory: Any) -> None:
        record = factory()
        if record is not None:
            with self._lock:
                self.records.append(record)

    def of(self, container_id: str, rule: str | None = None) -> list[DetectionRecord]:
        with self._lock:
            return [r for r in self.records if r.container_id == container_id
                    and (rule is None or r.detection == rule)]

    def wait(self, container_id: str, rule: str, timeout: float = 10.0) -> list[DetectionRecord]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(container_id, rule)
            if found:
                return found
            time.sleep(0.05)
        return []


@pytest.fixture(scope="module")
def behave_image(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    from harness import busybox_rootfs_tar
    tar = busybox_rootfs_tar({name: data for name, data in SCRIPTS.items()})
    # scripts must be executable: rebuild their modes in the tar stream
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            if member.name.startswith("srv/"):
                member.mode = 0o755
            if member.name == "etc/shadow":
                member.mode = 0o600
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    subprocess.run(["docker", "import", "-c", 'CMD ["/bin/sh"]', "-", BEHAVE_IMAGE],
                   input=out.getvalue(), check=True, capture_output=True)
    yield BEHAVE_IMAGE
    subprocess.run(["docker", "rmi", "-f", BEHAVE_IMAGE], capture_output=True)


def start(docker_client: docker.DockerClient, image: str, name: str, containers: list[str],
          svc: BehaviorService, **kw: Any) -> Any:
    kw.setdefault("network_mode", "none")  # loopback only: the network tests stay inside
    c = docker_client.containers.create(image, ["sleep", "300"], name=name, **kw)
    containers.append(c.id)  # before start: a container that fails to start is removed too
    c.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if svc.files is not None and c.id in svc.files.containers():
            return c
        time.sleep(0.05)
    pytest.fail("the behaviour service did not start watching the container")


def eventually(check: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def remote_peer_latency(container: Any, port: int) -> None:
    """Make a connection to ``port`` inside ``container`` take a second, as one to a distant host does.

    A real reverse shell connects to an attacker across the internet, so ``nc host port -e sh``
    lives for at least a network round trip before it becomes the shell. On loopback the connect
    takes microseconds and nc is replaced by sh before anyone can read its /proc entry, which
    tests a different thing (see the reader's ``replaced_before_read`` counter). This machine has
    no netem qdisc, so the first SYN to the port is dropped in the container's own network
    namespace (gone with the container) and TCP's 1 s retransmission timeout is the round trip.
    """
    container.reload()
    pid = int(container.attrs["State"]["Pid"])
    ruleset = ("table inet hullguard_test_latency {\n chain out {\n  type filter hook output priority 0;\n"
               f"  tcp dport {port} tcp flags & (syn|ack) == syn quota until 100 bytes drop\n }}\n}}\n")
    subprocess.run(["nsenter", "-t", str(pid), "-n", "nft", "-f", "-"], input=ruleset.encode(),
                   check=True, capture_output=True, timeout=10)
