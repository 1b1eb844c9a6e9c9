"""Images built here by Docker (from the busybox fixture), scanned from the daemon, from
``docker save`` archives in both layouts and from an OCI layout directory."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shared image builders

import contextlib

from hullguard.engine.engine import Engine
from hullguard.objects.images.api import ImageTarget, scan_image_target
from hullguard.objects.images.model import ImageReport
from hullguard.objects.images.scanner import ImageScanner
from hullguard.objects.layercache import LayerCache
from imagebuild import EICAR, legacy_to_oci, targz

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HULLGUARD = str(Path(sys.executable).with_name("hullguard"))


@dataclass(frozen=True)
class Built:
    clean: str
    top: str
    hidden: str
    targz: str

    def all(self) -> list[str]:
        return [self.clean, self.top, self.hidden, self.targz]


DOCKERFILES = {
    "clean": "FROM {base}\nRUN echo hello > /hello.txt\nCOPY clean.txt /srv/clean.txt\n",
    "top": "FROM {base}\nRUN echo hello > /hello.txt\nCOPY eicar.com /srv/eicar.com\n",
    "hidden": "FROM {base}\nCOPY eicar.com /srv/eicar.com\nRUN rm /srv/eicar.com && echo gone > /srv/note\n",
    "targz": "FROM {base}\nCOPY bundle.tar.gz /opt/bundle.tar.gz\n",
}


def build_images(client: docker.DockerClient, base: str, prefix: str, workdir: Path) -> Built:
    ctx = workdir / "ctx"
    ctx.mkdir()
    (ctx / "eicar.com").write_bytes(EICAR)
    (ctx / "clean.txt").write_bytes(b"nothing to see\n")
    (ctx / "bundle.tar.gz").write_bytes(targz("payload/eicar.com", EICAR))
    tags = {}
    for kind, text in DOCKERFILES.items():
        (ctx / "Dockerfile").write_text(text.format(base=base))
        tag = f"{prefix}/{kind}:1"
        client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True, pull=False)
        tags[kind] = tag
    return Built(**tags)


@pytest.fixture(scope="module")
def images(docker_client: docker.DockerClient, busybox_image: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Built]:
    prefix = f"hgtest-img-{secrets.token_hex(3)}"  # unique: concurrent runs must not share tags
    built: Built | None = None
    try:
        built = build_images(docker_client, busybox_image, prefix, tmp_path_factory.mktemp("build"))
        yield built
    finally:
        for tag in (built.all() if built else []):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tag, force=True)


@pytest.fixture
def scanner(tmp_path: Path) -> Iterator[ImageScanner]:
    cache = LayerCache.open(tmp_path / "cache" / "layers.db")
    yield ImageScanner(Engine.load(), cache)
    cache.close()


def summary(report: ImageReport) -> list[tuple[str, bool, tuple[str, ...]]]:
    return [(f.path, f.hidden, f.verdict.inner) for f in report.detections]


EXPECTED = {
    "clean": [],
    "top": [("/srv/eicar.com", False, ())],
    "hidden": [("/srv/eicar.com", True, ())],
    "targz": [("/opt/bundle.tar.gz", False, ("payload/eicar.com",))],
}


def test_docker_daemon_images(images: Built, scanner: ImageScanner, docker_client: docker.DockerClient) -> None:
    for kind, expected in EXPECTED.items():
        tag = getattr(images, kind)
        report = scan_image_target(ImageTarget.parse(f"image:{tag}"), scanner, client=docker_client)  # type: ignore[arg-type]
        assert summary(report) == expected, kind
        assert not report.not_scanned, kind
        assert report.ref.image_id == docker_client.images.get(tag).id
        for f in report.detections:
            assert str(f.uri).startswith(f"docker-image://{tag}@sha256:")
            assert f.layer_digest == docker_client.images.get(tag).attrs["RootFS"]["Layers"][f.layer_index]
        if kind == "hidden":
            assert "hidden in image history (deleted by a whiteout in layer 2)" in report.detections[0].verdict.detail


def test_warm_rescan_reads_nothing(images: Built, scanner: ImageScanner,
                                   docker_client: docker.DockerClient) -> None:
    target = ImageTarget.parse(f"image:{images.hidden}")
    assert target is not None
    cold = scan_image_target(target, scanner, client=docker_client)
    assert {layer.status for layer in cold.layers} == {"scanned"}
    warm = scan_image_target(target, scanner, client=docker_client)
    assert {layer.status for layer in warm.layers} == {"cached"}
    assert summary(warm) == summary(cold) and warm.detections[0].hidden
    # another image sharing layers (the base, and the COPY of the same file): recognised in the
    # export stream and confirmed by hashing; only its own RUN layer is scanned
    other = scan_image_target(ImageTarget.parse(f"image:{images.top}"), scanner, client=docker_client)  # type: ignore[arg-type]
    # whether the two COPY layers are byte-identical depends on the build (directory mtimes):
    # expect exactly the layers the first image has to come from the cache
    seen = set(docker_client.images.get(images.hidden).attrs["RootFS"]["Layers"])
    top_ids = docker_client.images.get(images.top).attrs["RootFS"]["Layers"]
    assert top_ids[0] in seen  # the base, at least
    assert [layer.status for layer in other.layers] == ["cached" if d in seen else "scanned" for d in top_ids]
    assert summary(other) == EXPECTED["top"]


def test_docker_save_archives_and_oci_layout(images: Built, scanner: ImageScanner, tmp_path: Path) -> None:
    for kind, expected in EXPECTED.items():
        tag = getattr(images, kind)
        legacy = tmp_path / f"{kind}.tar"
        saved = subprocess.run(["docker", "save", "-o", str(legacy), tag], capture_output=True, text=True)
        assert saved.returncode == 0, f"docker save {tag}: {saved.stderr}"
        with tarfile.open(legacy) as tar:
            names = tar.getnames()
        # Docker 20.10 writes only the legacy layout; the OCI forms are converted from it
        oci_native = "index.json" in names
        oci_dir, oci_tar = tmp_path / f"{kind}-oci", tmp_path / f"{kind}-oci.tar"
        index_only = tmp_path / f"{kind}-oci-index-only.tar"
        legacy_to_oci(legacy, oci_dir, oci_tar, gzip_layers=True, out_index_only=index_only)
        with tarfile.open(index_only) as tar:
            only = tar.getnames()
        assert "index.json" in only and "manifest.json" not in only  # the OCI index path, nothing else
        for text in (f"docker-archive:{legacy}", f"docker-archive:{oci_tar}", f"docker-archive:{index_only}",
                     f"oci:{oci_dir}"):
            fresh = ImageScanner(scanner.scanner, None)  # no cache: really walk each form
            report = scan_image_target(ImageTarget.parse(text), fresh)  # type: ignore[arg-type]
            assert summary(report) == expected, (text, oci_native)
            assert not report.not_scanned, text


def run_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HULLGUARD, "--state-dir", str(state), "scan", "--quiet", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_formats_exit_codes_and_fail_on(images: Built, tmp_path: Path) -> None:
    state = tmp_path / "state"
    clean = run_cli(state, f"image:{images.clean}")
    assert clean.returncode == 0, clean.stderr
    out = run_cli(state, "--format", "json", f"image:{images.hidden}", f"image:{images.targz}")
    assert out.returncode == 50, out.stderr
    records = json.loads(out.stdout)["records"]
    objects = sorted(r["object"] for r in records)
    assert len(objects) == 2
    assert any(o.startswith(f"docker-image://{images.hidden}@sha256:") and o.endswith("/srv/eicar.com")
               for o in objects)
    assert any(o.endswith("/opt/bundle.tar.gz!/payload/eicar.com") for o in objects)
    hidden = next(r for r in records if r["object"].endswith("/srv/eicar.com"))
    assert "hidden in image history" in hidden["info"] and hidden["module"] == "Container image scan"
    assert hidden["layer"].startswith("sha256:") and hidden["image"] == images.hidden
    sarif = run_cli(state, "--format", "sarif", f"image:{images.top}")
    assert sarif.returncode == 50 and json.loads(sarif.stdout)["runs"][0]["results"]
    # --fail-on: only the listed detection types fail the pipeline
    other_type = run_cli(state, "--fail-on", "Trojan,Virus", f"image:{images.top}")
    assert other_type.returncode == 0, other_type.stderr
    same_type = run_cli(state, "--fail-on", "test FILE", f"image:{images.top}")
    assert same_type.returncode == 50
    missing = run_cli(state, "image:hgtest-no-such-image:404")
    assert missing.returncode == 10 and "no such image" in missing.stdout + missing.stderr
    bad = run_cli(state, "--platform", "not/a/plat/form", f"image:{images.top}")
    assert bad.returncode == 100 and "invalid platform" in bad.stderr
