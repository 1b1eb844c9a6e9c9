"""Images pushed to a local registry, pulled into a standalone containerd and into podman
storage, and scanned from each store. Everything runs on 127.0.0.1 with temporary roots."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_images_docker import EXPECTED, Built, build_images

from hullguard.engine.engine import Engine
from hullguard.objects.images.api import ImageOptions, ImageTarget, scan_image_target
from hullguard.objects.images.containerd import Containerd, ContainerdStore
from hullguard.objects.images.manifest import ImageError
from hullguard.objects.images.model import ImageReport
from hullguard.objects.images.scanner import ImageScanner
from hullguard.objects.layercache import LayerCache

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.3)
    pytest.fail(f"{what} did not come up within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def unmount_below(path: Path) -> None:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for p in sorted((p for p in points if p.startswith(str(path) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], check=False, capture_output=True)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="hgst-", dir="/tmp"))
    try:
        yield d
    finally:
        unmount_below(d)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def registry(workdir: Path) -> Iterator[str]:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt install docker-registry)")
    port = free_port()
    conf = workdir / "registry.yml"
    conf.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                    f"{workdir / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["docker-registry", "serve", str(conf)], stdout=log, stderr=log)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).status == 200,
                 "docker-registry")
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def pushed(docker_client: docker.DockerClient, busybox_image: str, registry: str, workdir: Path
           ) -> Iterator[dict[str, str]]:
    built: Built | None = None
    remote: dict[str, str] = {}
    try:
        built = build_images(docker_client, busybox_image, f"hgtest-st-{secrets.token_hex(3)}", workdir)
        for kind in ("clean", "top", "hidden", "targz"):
            local = getattr(built, kind)
            name = f"{registry}/hgtest/{kind}:1"
            docker_client.images.get(local).tag(name)
            remote[kind] = name
            out = subprocess.run(["docker", "push", name], capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr
        yield remote
    finally:
        for name in [*remote.values(), *(built.all() if built else [])]:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(name, force=True)


@pytest.fixture(scope="module")
def containerd(workdir: Path) -> Iterator[Containerd]:
    root, state, sock = workdir / "cd-root", workdir / "cd-state", workdir / "cd.sock"
    conf = workdir / "containerd.toml"
    conf.write_text(f'version = 2\nroot = "{root}"\nstate = "{state}"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
                    '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
    log = open(workdir / "containerd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["containerd", "--config", str(conf)], stdout=log, stderr=log,
                            start_new_session=True)
    cd = Containerd(address=str(sock), root=str(root), namespace="hgtest")
    try:
        wait_for(lambda: subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True).returncode == 0,
                 "containerd")
        yield cd
    finally:
        stop(proc)
        log.close()
        unmount_below(workdir)


@pytest.fixture
def scanner(tmp_path: Path) -> Iterator[ImageScanner]:
    cache = LayerCache.open(tmp_path / "layers.db")
    yield ImageScanner(Engine.load(), cache)
    cache.close()


def summary(report: ImageReport) -> list[tuple[str, bool, tuple[str, ...]]]:
    return [(f.path, f.hidden, f.verdict.inner) for f in report.detections]


def test_containerd_content_store(pushed: dict[str, str], containerd: Containerd, scanner: ImageScanner) -> None:
    for name in pushed.values():
        pull = subprocess.run(["ctr", "-a", containerd.address, "-n", containerd.namespace, "images", "pull",
                               "--plain-http", name], capture_output=True, text=True, timeout=300)
        assert pull.returncode == 0, pull.stderr
    opts = ImageOptions(namespace=containerd.namespace, containerd_address=containerd.address,
                        containerd_root=containerd.root)
    assert ContainerdStore(containerd).mode == "content directory"
    for kind, name in pushed.items():
        report = scan_image_target(ImageTarget.parse(f"containerd:{name}"), scanner, opts)  # type: ignore[arg-type]
        assert summary(report) == EXPECTED[kind], kind
        assert not report.not_scanned
        for f in report.detections:
            assert str(f.uri).startswith(f"containerd://hgtest/{name}@sha256:")
    # without access to the content directory, blobs stream from `ctr content get`
    remote = replace(opts, containerd_root="/nonexistent")
    fresh = ImageScanner(scanner.scanner, None)
    report = scan_image_target(ImageTarget.parse(f"containerd:{pushed['hidden']}"), fresh, remote)  # type: ignore[arg-type]
    assert summary(report) == EXPECTED["hidden"]
    with pytest.raises(ImageError, match=r"no image .* in namespace default"):
        scan_image_target(ImageTarget.parse(f"containerd:{pushed['top']}"), fresh,  # type: ignore[arg-type]
                          replace(opts, namespace="default"))


def test_podman_storage(pushed: dict[str, str], workdir: Path, scanner: ImageScanner) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    root, runroot = workdir / "podman-root", workdir / "podman-run"
    base = ["podman", "--root", str(root), "--runroot", str(runroot)]
    try:
        for name in pushed.values():
            pull = subprocess.run([*base, "pull", "--tls-verify=false", name], capture_output=True, text=True,
                                  timeout=300)
            assert pull.returncode == 0, pull.stderr
        opts = ImageOptions(podman_root=str(root), podman_runroot=str(runroot))
        for kind, name in pushed.items():
            report = scan_image_target(ImageTarget.parse(f"podman:{name}"), scanner, opts)  # type: ignore[arg-type]
            assert summary(report) == EXPECTED[kind], kind
            assert not report.not_scanned
        warm = scan_image_target(ImageTarget.parse(f"podman:{pushed['hidden']}"), scanner, opts)  # type: ignore[arg-type]
        assert {layer.status for layer in warm.layers} == {"cached"}
    finally:
        subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True, timeout=120)
        unmount_below(root)
