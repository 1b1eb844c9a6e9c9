"""Images in the Docker daemon (``image:NAME``) and in podman's storage (``podman:NAME``).

Both engines verified every layer when they stored it and say which layers an image has
(``RootFS.Layers`` of the image inspect: the diff_ids). When every one of them is already in
the layer cache for the current signatures, the image is reported from the cache without
reading a byte of it. Otherwise the image is streamed from the engine's export
(``GET /images/NAME/get`` through the Docker SDK, ``podman save`` to a pipe) straight into
:class:`ArchiveStreamScan`; there is never a temporary copy of the image.

Reading podman's containers-storage directly would avoid the export, but its layout is
private to the storage driver (overlay diff directories, vfs copies, lock files); ``podman
save`` is the interface podman keeps stable, and it hands us the layer tars with the digests
we check.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from hullguard.objects.images.archive import ArchiveStreamScan, PrefetchReader
from hullguard.objects.images.digest import Readable, check_digest
from hullguard.objects.images.manifest import ImageError
from hullguard.objects.images.model import ImageRef, ImageReport
from hullguard.objects.images.scanner import ImageScanner, LayerOutcome
from hullguard.objects.uri import escape_text

SAVE_CHUNK = 1 << 20


def from_cache(scanner: ImageScanner, ref: ImageRef, diff_ids: Sequence[str]) -> ImageReport | None:
    """The report of an image whose every layer is cached; None when one is not."""
    start = time.monotonic()
    outcomes: list[LayerOutcome] = []
    for i, diff_id in enumerate(diff_ids):
        hit = scanner.cached(i, diff_id)
        if hit is None:
            return None
        outcomes.append(hit)
    return scanner.finish(ref, outcomes, start=start)


def _diff_ids(attrs: dict[str, Any], what: str) -> list[str]:
    layers = (attrs.get("RootFS") or {}).get("Layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: the image inspect has no RootFS.Layers")
    try:
        return [check_digest(str(x)) for x in layers]
    except ValueError as exc:
        raise ImageError(f"{what}: {exc}") from None


def _display(name: str, attrs: dict[str, Any]) -> str:
    tags = attrs.get("RepoTags") or []
    if name.startswith("sha256:") or all(c in "0123456789abcdef" for c in name):
        return str(tags[0]) if tags else name
    return name


def _docker_ref(name: str, attrs: dict[str, Any]) -> ImageRef:
    return ImageRef("docker", _display(name, attrs), image_id=str(attrs.get("Id", "")),
                    platform=f"{attrs.get('Os', '')}/{attrs.get('Architecture', '')}".strip("/"))


def cached_docker_image(scanner: ImageScanner, name: str, attrs: dict[str, Any]) -> ImageReport | None:
    """The report of ``image:NAME`` from its inspect document alone, when every layer is cached."""
    return from_cache(scanner, _docker_ref(name, attrs), _diff_ids(attrs, escape_text(name)))


def scan_docker_image(scanner: ImageScanner, name: str, client: Any) -> ImageReport:
    """``image:NAME`` from the Docker daemon ``client`` (a docker.DockerClient)."""
    import docker.errors

    what = escape_text(name)
    try:
        attrs: dict[str, Any] = client.api.inspect_image(name)
    except docker.errors.ImageNotFound:
        raise ImageError(f"{what}: no such image in the Docker daemon (docker images lists them)") from None
    except docker.errors.APIError as exc:
        raise ImageError(f"{what}: Docker: {exc.explanation or exc}") from None
    cached = cached_docker_image(scanner, name, attrs)
    if cached is not None:
        return cached
    ref = _docker_ref(name, attrs)
    image_id, display = ref.image_id, ref.name

    @contextmanager
    def export() -> Iterator[Readable]:
        try:
            chunks = client.api.get_image(image_id or name, chunk_size=SAVE_CHUNK)
        except docker.errors.APIError as exc:
            raise ImageError(f"{what}: Docker export failed: {exc.explanation or exc}") from None
        reader = PrefetchReader(chunks)
        try:
            yield reader
        finally:
            reader.close()
            close = getattr(chunks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    report = ArchiveStreamScan(scanner, export, source="docker", name=display).run()
    return _named(report, ref)


def _named(report: ImageReport, ref: ImageRef) -> ImageReport:
    """Keep the name and id the engine knows the image by (the archive may only have a tag)."""
    if report.ref.name == ref.name:
        return report
    fixed = [replace(f, uri=ref.uri(f.layer_digest, f.path).child(*f.verdict.inner)) for f in report.findings]
    return ImageReport(ref, report.layers, tuple(fixed), report.error, report.elapsed, report.extra)


@dataclass(frozen=True)
class Podman:
    root: str = ""
    runroot: str = ""
    storage_driver: str = ""
    podman: str = "podman"

    def cmd(self, *args: str) -> list[str]:
        exe = shutil.which(self.podman) or self.podman
        opts = []
        if self.root:
            opts += ["--root", self.root]
        if self.runroot:
            opts += ["--runroot", self.runroot]
        if self.storage_driver:
            opts += ["--storage-driver", self.storage_driver]
        return [exe, *opts, *args]


def scan_podman_image(scanner: ImageScanner, name: str, podman: Podman) -> ImageReport:
    """``podman:NAME`` from containers-storage, through ``podman save`` to a pipe."""
    import json

    what = escape_text(name)
    try:
        proc = subprocess.run(podman.cmd("image", "inspect", name), capture_output=True, timeout=120,
                              check=False)
    except FileNotFoundError:
        raise ImageError("podman: the podman command is not installed") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ImageError(f"{what}: podman: {escape_text(err[-1] if err else 'image inspect failed')}")
    try:
        docs = json.loads(proc.stdout)
        attrs: dict[str, Any] = docs[0]
    except (ValueError, IndexError, KeyError, TypeError):
        raise ImageError(f"{what}: podman image inspect gave no image") from None
    image_id = "sha256:" + str(attrs.get("Id", "")).removeprefix("sha256:")
    display = _display(name, attrs)
    ref = ImageRef("podman", display, image_id=image_id, manifest_digest=str(attrs.get("Digest", "")),
                   platform=f"{attrs.get('Os', '')}/{attrs.get('Architecture', '')}".strip("/"))
    diff_ids = _diff_ids(attrs, what)
    cached = from_cache(scanner, ref, diff_ids)
    if cached is not None:
        return cached

    @contextmanager
    def export() -> Iterator[Readable]:
        save = subprocess.Popen(podman.cmd("save", "--format", "docker-archive", "-o", "/dev/stdout", name),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert save.stdout is not None and save.stderr is not None
        try:
            yield save.stdout
        finally:
            save.stdout.close()
            try:
                save.wait(timeout=30)
            except subprocess.TimeoutExpired:
                save.kill()
                save.wait()
            err = save.stderr.read().decode(errors="replace").strip()
            save.stderr.close()
            if save.returncode not in (0, -13) and err:
                raise ImageError(f"{what}: podman save failed: {escape_text(err.splitlines()[-1])}")

    report = ArchiveStreamScan(scanner, export, source="podman", name=display, want="").run()
    return _named(report, ref)
