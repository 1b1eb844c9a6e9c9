"""Integration harness: real dockerd, a locally built busybox image, and cleanup of everything made.

Services are started here when they are not already running (CI starts from a clean machine;
``scripts/services.sh`` does the same for a person). Nothing is pulled from the internet:
the test image is a busybox-static root filesystem fed to ``docker import``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from agent_support import Agent, tmpfs_at
from harness import TEST_IMAGE, busybox_rootfs_tar, ensure_dockerd


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    if os.geteuid() != 0:
        pytest.skip("integration tests run as root")
    ensure_dockerd()
    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> Iterator[str]:
    """The busybox test image, built with `docker import` unless an identical one exists.

    Its import message holds the root filesystem's SHA-256, so an image left by a concurrent
    run (or a developer's earlier one) with the same content is reused, and left in place.
    An image this session imported is removed at the end; images still used by a container or
    by a child image of another run are left to that run (the removal is not forced).
    """
    rootfs = busybox_rootfs_tar()
    digest = hashlib.sha256(rootfs).hexdigest()
    try:
        history = docker_client.images.get(TEST_IMAGE).history()
        if any(digest in (h.get("Comment") or "") for h in history):
            yield TEST_IMAGE
            return
    except docker.errors.ImageNotFound:
        pass
    subprocess.run(
        ["docker", "import", "-m", f"hullguard test rootfs {digest}", "-c", 'CMD ["/bin/sh"]', "-", TEST_IMAGE],
        input=rootfs, check=True, capture_output=True)
    yield TEST_IMAGE
    with contextlib.suppress(docker.errors.APIError):
        docker_client.images.remove(TEST_IMAGE, noprune=False)


@pytest.fixture
def unique_name() -> str:
    return f"hgtest-{secrets.token_hex(4)}"


@pytest.fixture
def containers(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Append container ids here; they are force-removed (with volumes) after the test."""
    made: list[str] = []
    yield made
    for cid in made:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(cid).remove(force=True, v=True)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Append agents here (``agent_support.new_agent`` does); they are stopped after the test."""
    made: list[Agent] = []
    yield made
    for a in made:
        a.stop()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs only this test uses, so an agent's filesystem mark on it touches nothing else."""
    with tmpfs_at(tmp_path / "protected") as mnt:
        yield mnt


@pytest.fixture
def built_images(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Append image ids and tags (``agent_support.classic_build`` does); removed after the test,
    newest first, also after a failed build."""
    made: list[str] = []
    yield made
    for ref in reversed(made):
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(ref, force=True, noprune=False)
