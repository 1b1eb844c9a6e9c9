"""Image builds under real-time protection (Docker's classic builder: RUN steps are containers).

``DOCKER_BUILDKIT=0`` selects the classic builder, whose ``RUN`` steps run in ordinary
containers on overlay2 that the agent marks as soon as their overlay is mounted. BuildKit runs
steps in its own snapshotter mounts, which the agent does not cover yet.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import docker
import pytest
from agent_support import BAD_NAME, BAD_SCRIPT, EICAR_SHA1, Agent, classic_build, new_agent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def octal(data: bytes) -> str:
    """printf-ready octal escapes, so the Dockerfile needs no shell quoting of the payload."""
    return "".join(f"\\{b:03o}" for b in data)


def build_container_ids(output: str) -> list[str]:
    return re.findall(r"---> Running in ([0-9a-f]{12})", output)


def test_run_step_writing_eicar_is_detected_with_the_build_container_uri(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, agents: list[Agent],
        built_images: list[str], tmp_path: Path, eicar: bytes) -> None:
    agent = new_agent(agents, tmp_path / "a", [])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_image}\nRUN printf '{octal(eicar)}' > /eicar.com && echo written\n")
    base_id = docker_client.images.get(busybox_image).id
    proc = classic_build(ctx, f"{unique_name}:eicar", built_images, base_id)
    assert proc.returncode == 0, proc.stderr  # the file is retained: the build itself goes on
    (short,) = build_container_ids(proc.stdout)
    rec = agent.wait_record(lambda r: r.object.endswith("/eicar.com") and r.container_id.startswith(short))
    assert rec.object == f"docker://{rec.image}@{rec.container_id}/eicar.com"
    assert len(rec.container_id) == 64
    assert rec.action == "Retained" and rec.sha1 == EICAR_SHA1
    assert rec.event == "Event occurred on a newly created file."


def test_run_step_executing_a_detected_script_fails_the_build(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, agents: list[Agent],
        built_images: list[str], tmp_path: Path) -> None:
    agent = new_agent(agents, tmp_path / "a", [])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "bad.sh").write_bytes(BAD_SCRIPT)
    (ctx / "bad.sh").chmod(0o755)
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY bad.sh /bad.sh\nRUN /bad.sh\n")
    base_id = docker_client.images.get(busybox_image).id
    start = time.monotonic()
    proc = classic_build(ctx, f"{unique_name}:bad", built_images, base_id)
    assert proc.returncode != 0, proc.stdout
    assert "bad-script-ran" not in proc.stdout
    assert re.search(r"denied|not permitted", proc.stdout + proc.stderr, re.I), proc.stdout + proc.stderr
    rec = agent.wait_record(lambda r: r.object.endswith("@" + r.container_id + "/bad.sh")
                            and r.event == "Event occurred on executing a file.")
    assert rec.detection == BAD_NAME
    print(f"\nbuild failed as expected after {time.monotonic() - start:.1f} s")
