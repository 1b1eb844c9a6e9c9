"""Image scanning on deployment through `hullguard agent` (the daemon's [images] wiring).

Detect mode runs against the machine's dockerd: `docker create` of an image with EICAR in a
layer gives a journal record naming the container. Block mode runs against a test dockerd of
its own (test_images_gate.gate_dockerd) started with the agent's authorization plugin. SIGHUP
must make the image scanning use the new signatures.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_images_docker import Built
from test_images_gate import built, gate_dockerd  # noqa: F401 - `built` is a module fixture used here
from test_realtime import Agent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def images_agent(base: Path, images: str, sigs: str = "") -> Agent:
    """An agent with only image scanning (no real-time, no behaviour), run and state dirs in ``base``."""
    a = Agent(base, [])
    a.config.write_text(
        f'run_dir = "{a.run_dir}"\n'
        + (f'[engine]\nsignature_dirs = ["{sigs}"]\n' if sigs else "")
        + "[realtime]\nenabled = false\n[behavior]\nenabled = false\n"
        + f"[images]\n{images}\n")
    return a


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    made: list[Agent] = []
    yield made
    for a in made:
        a.stop()


@pytest.fixture
def infected_image(docker_client: docker.DockerClient, busybox_image: str, eicar: bytes, unique_name: str,
                   tmp_path: Path) -> Iterator[str]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "eicar.com").write_bytes(eicar)
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY eicar.com /srv/eicar.com\n")
    tag = f"{unique_name}/deploy:1"
    docker_client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True, pull=False)
    try:
        yield tag
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


def test_detect_mode_records_created_container(docker_client: docker.DockerClient, infected_image: str,
                                               unique_name: str, containers: list[str], agents: list[Agent],
                                               tmp_path: Path) -> None:
    agent = images_agent(tmp_path / "a", 'gate = "detect"')
    agents.append(agent)
    agent.start()
    assert agent.ready["images"] == "detect"
    created = time.monotonic()
    c = docker_client.containers.create(infected_image, ["true"], name=f"{unique_name}-d", network_mode="none")
    containers.append(str(c.id))
    rec = agent.wait_record(lambda r: r.container_id == c.id, timeout=30)
    took = time.monotonic() - created
    print(f"\ndocker create -> image record: {took:.2f} s")
    assert took < 30
    assert rec.object == f"docker://{infected_image}@{c.id}/srv/eicar.com"
    assert rec.detection.lower().startswith("eicar") and rec.action == "Retained"
    assert rec.event == "Event occurred on deploying a container."
    assert rec.container_name == f"{unique_name}-d" and rec.image == infected_image
    assert rec.layer.startswith("sha256:")
    assert agent.stop() == 0


def test_containers_created_while_the_agent_was_down_are_checked_at_start(
        docker_client: docker.DockerClient, infected_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    c = docker_client.containers.create(infected_image, ["true"], name=f"{unique_name}-early", network_mode="none")
    containers.append(str(c.id))
    agent = images_agent(tmp_path / "a", 'gate = "detect"')
    agents.append(agent)
    agent.start()
    rec = agent.wait_record(lambda r: r.container_id == c.id, timeout=30)
    assert rec.object == f"docker://{infected_image}@{c.id}/srv/eicar.com"
    assert rec.event == "Event occurred on deploying a container."
    assert agent.stop() == 0
    # a restart checks it again (a new agent knows nothing of the last one's checks)
    again = images_agent(tmp_path / "b", 'gate = "detect"')
    agents.append(again)
    again.start()
    assert again.wait_record(lambda r: r.container_id == c.id, timeout=30).container_name == f"{unique_name}-early"


def test_sighup_reload_makes_the_watch_use_new_signatures(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    """A file no signature knows, then a signature for it and SIGHUP: the next container is flagged."""
    payload = b"hullguard image reload test " + secrets.token_hex(8).encode() + b"\n"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "payload.bin").write_bytes(payload)
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY payload.bin /srv/payload.bin\n")
    tag = f"{unique_name}/reload:1"
    docker_client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True, pull=False)
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    try:
        agent = images_agent(tmp_path / "a", 'gate = "detect"', str(sigs))
        agents.append(agent)
        agent.start()
        first = docker_client.containers.create(tag, ["true"], name=f"{unique_name}-r1", network_mode="none")
        containers.append(str(first.id))
        time.sleep(5)  # scanned (clean): nothing recorded
        assert not [r for r in agent.records() if r.container_id == first.id]
        (sigs / "reload.hdb").write_text(f"{hashlib.md5(payload).hexdigest()}:{len(payload)}:Hullguard.Test.Reload\n")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_record(lambda r: r.module == "Agent" and "signatures reloaded" in r.info, timeout=20)
        second = docker_client.containers.create(tag, ["true"], name=f"{unique_name}-r2", network_mode="none")
        containers.append(str(second.id))
        rec = agent.wait_record(lambda r: r.container_id == second.id, timeout=30)
        assert rec.detection == "Hullguard.Test.Reload"
        assert rec.object == f"docker://{tag}@{second.id}/srv/payload.bin"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


def test_block_mode_through_the_agent(built: tuple[Built, Path], agents: list[Agent], tmp_path: Path,  # noqa: F811
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    images, archive = built
    plugin = f"hgtest-{secrets.token_hex(4)}"
    root = Path(tempfile.mkdtemp(prefix="hgd-", dir="/tmp"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{root / 'd.sock'}")  # the agent talks to the test dockerd
    agent = images_agent(tmp_path / "a", f'gate = "block"\nplugin_name = "{plugin}"\ngate_scan_timeout = 25.0')
    agents.append(agent)
    agent.start()
    assert agent.ready["images"] == "block"
    assert Path(f"/run/docker/plugins/{plugin}.sock").is_socket()
    with gate_dockerd(plugin, archive, root) as d:
        ok = d.cli("run", "--rm", "--network", "none", images.clean, "cat", "/srv/clean.txt")
        assert ok.returncode == 0, ok.stderr + agent.errors()
        assert ok.stdout.strip() == "nothing to see"
        refused = d.cli("run", "--rm", "--network", "none", images.top, "true")
        assert refused.returncode != 0
        assert f"authorization denied by plugin {plugin}: hullguard: image {images.top}" in refused.stderr
        assert "contains malware: Eicar in /srv/eicar.com (layer 2)" in refused.stderr
        rec = agent.wait_record(lambda r: r.action == "Blocked", timeout=10)
        assert rec.image == images.top and rec.event == "Event occurred on deploying a container."
        assert d.cli("ps", "-a").returncode == 0  # other calls pass
        assert agent.stop() == 0
        assert not Path(f"/run/docker/plugins/{plugin}.sock").exists()  # socket removed on stop
        # the daemon refuses everything while the plugin is gone (documented), until it is back
        agent.start()
        back = d.cli("ps", timeout=120)
        assert back.returncode == 0, back.stderr
        again = d.cli("create", "--network", "none", images.top, "true")
        assert again.returncode != 0 and "contains malware" in again.stderr
        assert agent.stop() == 0
