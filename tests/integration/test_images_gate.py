"""The Docker deployment gate against a dockerd of its own, started with our authorization plugin.

A separate test daemon (own data root, exec root, socket, containerd namespace; a bridge of
its own, no iptables) is started with ``--authorization-plugin``; the images are built by the main
daemon and loaded into it. We show: the clean image runs, the infected image is refused
with our message, the known body bypass is refused, and what happens while the agent is down.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import private_bridge
from test_images_docker import Built, build_images

from hullguard.agent.authzplugin import AuthzPluginServer
from hullguard.agent.imagegate import ImageGate, ImageJudge
from hullguard.agent.imagewatch import ImageWatch
from hullguard.engine.engine import Engine
from hullguard.journal.record import DetectionRecord
from hullguard.journal.store import JournalStore
from hullguard.objects.layercache import LayerCache

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PLUGIN_DIR = Path("/run/docker/plugins")


@dataclass
class GateDaemon:
    root: Path
    sock: Path
    plugin: str
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True,
                              timeout=timeout)

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=120)


def _mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(str(path) + "/")), key=len, reverse=True)


@pytest.fixture(scope="module")
def built(docker_client: docker.DockerClient, busybox_image: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Built, Path]]:
    prefix = f"hgtest-gate-{secrets.token_hex(3)}"
    work = tmp_path_factory.mktemp("gate")
    b: Built | None = None
    try:
        b = build_images(docker_client, busybox_image, prefix, work)
        archive = work / "images.tar"
        saved = subprocess.run(["docker", "save", "-o", str(archive), b.clean, b.top, b.hidden],
                               capture_output=True, text=True)
        assert saved.returncode == 0, saved.stderr
        yield b, archive
    finally:
        for tag in (b.all() if b else []):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def plugin_name() -> str:
    return f"hgtest-{secrets.token_hex(4)}"


@contextlib.contextmanager
def gate_dockerd(plugin: str, archive: Path, root: Path | None = None) -> Iterator[GateDaemon]:
    """A test dockerd started with ``--authorization-plugin=PLUGIN`` (whoever serves it must be up:
    every API call, even ``docker version``), with ``archive`` loaded; everything removed afterwards.

    Own data root, exec root, socket and containerd namespaces; its own bridge from
    ``private_bridge()`` (never --bridge=none: that deletes the host's docker0), no iptables.
    """
    root = root or Path(tempfile.mkdtemp(prefix="hgd-", dir="/tmp"))  # short: socket paths <= 108 bytes
    sock = root / "d.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - handed to the daemon, closed below
    try:
        with private_bridge() as bridge:
            proc = subprocess.Popen(
                ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "x"),
                 "--pidfile", str(root / "d.pid"), "-H", f"unix://{sock}", f"--bridge={bridge}",
                 "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                 "--containerd-namespace", f"{plugin}-moby", "--containerd-plugins-namespace",
                 f"{plugin}-plugins", f"--authorization-plugin={plugin}", "--log-level=warn"],
                stdout=log, stderr=log, start_new_session=True)
            d = GateDaemon(root, sock, plugin, proc)
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and d.cli("version", timeout=20).returncode != 0:
                    if proc.poll() is not None:
                        pytest.fail(f"test dockerd exited: {(root / 'dockerd.log').read_text()[-2000:]}")
                    time.sleep(0.5)
                loaded = d.cli("load", "-i", str(archive))
                assert loaded.returncode == 0, loaded.stderr
                yield d
            finally:
                with contextlib.suppress(Exception):
                    ids = d.cli("ps", "-aq", timeout=30).stdout.split()
                    if ids:
                        d.cli("rm", "-f", *ids, timeout=60)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        log.close()
        for m in _mounts_below(root):
            subprocess.run(["umount", "-l", m], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(plugin_name: str, built: tuple[Built, Path]) -> Iterator[GateDaemon]:
    # The plugin must answer while dockerd starts; serve an allow-all placeholder until the test's gate.
    holder: dict[str, object] = {}
    from hullguard.agent.authzplugin import AuthDecision

    def decide(req: object) -> AuthDecision:
        gate = holder.get("gate")
        return gate(req) if callable(gate) else AuthDecision(True)  # type: ignore[no-any-return]

    server = AuthzPluginServer(plugin_name, decide, PLUGIN_DIR)
    server.start()
    try:
        with gate_dockerd(plugin_name, built[1]) as d:
            d.holder = holder  # type: ignore[attr-defined]
            d.server = server  # type: ignore[attr-defined]
            yield d
    finally:
        server.stop()


@pytest.fixture
def gate(daemon: GateDaemon, tmp_path: Path) -> Iterator[tuple[ImageGate, JournalStore]]:
    engine = Engine.load()
    cache = LayerCache.open(tmp_path / "layers.db")
    journal = JournalStore.open(tmp_path / "journal.db")
    judge = ImageJudge(lambda: engine, cache, daemon.client)
    g = ImageGate(judge, timeout=60, journal=journal)
    daemon.holder["gate"] = g  # type: ignore[attr-defined]
    try:
        yield g, journal
    finally:
        daemon.holder.pop("gate", None)  # type: ignore[attr-defined]
        judge.close()
        journal.close()
        cache.close()


def test_clean_image_runs_infected_is_refused(daemon: GateDaemon, built: tuple[Built, Path],
                                              gate: tuple[ImageGate, JournalStore]) -> None:
    images, _ = built
    ok = daemon.cli("run", "--rm", "--network", "none", images.clean, "cat", "/srv/clean.txt")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "nothing to see"
    refused = daemon.cli("run", "--rm", "--network", "none", images.top, "true")
    assert refused.returncode != 0
    assert f"authorization denied by plugin {daemon.plugin}: hullguard: image {images.top}" in refused.stderr
    assert "contains malware: Eicar in /srv/eicar.com (layer 2)" in refused.stderr
    hidden = daemon.cli("create", "--network", "none", images.hidden, "true")
    assert hidden.returncode != 0 and "hidden in image history" in hidden.stderr
    records = gate[1].query()
    assert records and all(r.action == "Blocked" for r in records)
    # other calls pass untouched
    assert daemon.cli("ps", "-a").returncode == 0
    assert daemon.cli("images").returncode == 0


def test_start_of_a_container_is_checked(daemon: GateDaemon, built: tuple[Built, Path],
                                         gate: tuple[ImageGate, JournalStore]) -> None:
    images, _ = built
    # created while the gate was off (placeholder allows), started while it is on
    daemon.holder.pop("gate")  # type: ignore[attr-defined]
    created = daemon.cli("create", "--network", "none", images.top, "true")
    assert created.returncode == 0, created.stderr
    daemon.holder["gate"] = gate[0]  # type: ignore[attr-defined]
    started = daemon.cli("start", created.stdout.strip())
    assert started.returncode != 0 and "contains malware" in started.stderr


def test_body_bypass_is_refused(daemon: GateDaemon, built: tuple[Built, Path],
                                gate: tuple[ImageGate, JournalStore]) -> None:
    images, _ = built
    client = daemon.client()
    try:
        # over 1 MiB: dockerd does not forward the body to the plugin (CVE-2024-41110 class)
        with pytest.raises(docker.errors.APIError, match="without a request body"):
            client.api.create_container(images.clean, "true", environment={"PAD": "x" * (1 << 20)},
                                        network_disabled=True)
        small = client.api.create_container(images.clean, "true", network_disabled=True)
        client.api.remove_container(small["Id"], force=True)
    finally:
        client.close()


def test_detect_mode_watch_records_container_uri(daemon: GateDaemon, built: tuple[Built, Path],
                                                 tmp_path: Path) -> None:
    images, _ = built
    engine = Engine.load()
    cache = LayerCache.open(tmp_path / "watch-layers.db")
    journal = JournalStore.open(tmp_path / "watch-journal.db")
    judge = ImageJudge(lambda: engine, cache, daemon.client)
    from hullguard.runtime.docker import DockerEventFollower

    watch = ImageWatch(judge, journal, follower_factory=lambda ev, rs: DockerEventFollower(ev, rs, daemon.client))
    watch.start()
    try:
        time.sleep(1.0)
        created = daemon.cli("create", "--network", "none", images.hidden, "true")
        assert created.returncode == 0, created.stderr
        cid = created.stdout.strip()
        # containers this daemon already had (earlier tests') are checked when the watch
        # connects, so their records may be there too: this container's is the one to look at
        def mine() -> list[DetectionRecord]:
            return [r for r in journal.query() if r.container_id == cid]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not mine():
            time.sleep(0.2)
        [rec] = mine()
        assert rec.object.startswith(f"docker://{images.hidden}@{cid}/srv/eicar.com")
        assert rec.container_id == cid and "hidden in image history" in rec.info
        assert rec.event == "Event occurred on deploying a container."
        daemon.cli("rm", "-f", cid)
    finally:
        watch.stop()
        judge.close()
        journal.close()
        cache.close()


def test_agent_down_blocks_every_call_until_it_is_back(daemon: GateDaemon, built: tuple[Built, Path]) -> None:
    """Documented behaviour: dockerd refuses every API call while the plugin socket is gone."""
    server: AuthzPluginServer = daemon.server  # type: ignore[attr-defined]
    server.stop()
    try:
        assert not server.socket_path.exists()
        start = time.monotonic()
        down = daemon.cli("ps", timeout=120)
        took = time.monotonic() - start
        assert down.returncode != 0
        assert daemon.plugin in down.stderr, down.stderr
        print(f"agent down: 'docker ps' failed after {took:.1f} s: {down.stderr.strip()}")
    finally:
        server.start()
    back = daemon.cli("ps", timeout=120)
    assert back.returncode == 0, back.stderr
