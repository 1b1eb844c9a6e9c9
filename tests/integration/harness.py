"""Helpers of the integration harness that tests import by name (fixtures are in conftest.py).

Kept out of conftest.py on purpose: every test folder has a conftest module, so
``from conftest import ...`` picks whichever was imported first in a full run.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

BUSYBOX = Path("/bin/busybox") if Path("/bin/busybox").exists() else Path("/usr/bin/busybox")
TEST_IMAGE = "hullguard-test/busybox:latest"
APPLETS = ("sh", "ash", "cat", "echo", "sleep", "chmod", "rm", "ls", "mkdir", "cp", "mv", "id",
           "touch", "head", "tail", "wc", "true", "false", "env", "ps", "kill", "nc", "wget", "grep",
           "sed", "tar", "gzip", "dd", "ln", "stat", "sync", "find", "printf", "test", "[", "mount",
           "umount", "sha1sum", "md5sum", "whoami", "hostname", "uname", "date", "vi", "xargs")
DOCKER_SOCK = Path("/var/run/docker.sock")


def _docker_alive() -> bool:
    try:
        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


def ensure_dockerd() -> None:
    """Start dockerd (and nothing else) when no daemon answers; wait up to 60 s for it."""
    if _docker_alive():
        return
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is not installed: run `make setup` (installs docker.io)")
    log = open("/var/log/hullguard-test-dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon
    subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _docker_alive():
            return
        time.sleep(0.5)
    pytest.fail("dockerd did not start within 60 s; see /var/log/hullguard-test-dockerd.log")


def busybox_rootfs_tar(extra: dict[str, bytes] | None = None) -> bytes:
    """A minimal root filesystem: busybox-static, its applets as symlinks, /etc/passwd, /tmp."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "root", "proc", "sys", "dev", "var", "usr", "usr/bin"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        for name, data in (extra or {}).items():
            add_file(name, data)
    return buf.getvalue()


@contextlib.contextmanager
def private_bridge() -> Iterator[str]:
    """A Linux bridge of our own for a test dockerd (``--bridge=NAME``), removed afterwards.

    Never start a test dockerd with ``--bridge=none``: dockerd then deletes the host's
    ``docker0`` (removeDefaultBridgeInterface) and breaks the machine's own daemon.
    """
    name = f"hgbr{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"10.213.{secrets.randbelow(200) + 20}.1/24", "dev", name], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
