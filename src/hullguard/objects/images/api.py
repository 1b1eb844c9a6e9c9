"""Image targets as the user writes them, and the one call that scans any of them.

``image:NAME`` (Docker daemon), ``docker-archive:FILE[:REF]``, ``oci:DIR[:REF]``,
``containerd:NAME`` (namespace from ``--namespace``), ``podman:NAME``. The CLI, the
deployment gate and the event watcher all come through :func:`scan_image_target`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hullguard.objects.images import dockerapi
from hullguard.objects.images.archive import ArchiveStreamScan
from hullguard.objects.images.blobstore import scan_oci_dir
from hullguard.objects.images.containerd import DEFAULT_ADDRESS, DEFAULT_ROOT, Containerd, scan_containerd
from hullguard.objects.images.daemon import Podman, cached_docker_image, scan_docker_image, scan_podman_image
from hullguard.objects.images.digest import Readable
from hullguard.objects.images.manifest import ImageError, Platform, split_reference
from hullguard.objects.images.model import ImageReport
from hullguard.objects.images.scanner import ImageScanner
from hullguard.objects.uri import escape_text

IMAGE_PREFIXES = {
    "image": "image:NAME[:TAG]",
    "docker-archive": "docker-archive:FILE[:REF]",
    "oci": "oci:DIR[:REF]",
    "containerd": "containerd:NAME",
    "podman": "podman:NAME",
}


@dataclass(frozen=True)
class ImageOptions:
    """Where the image stores are and which platform to pick; defaults fit a stock host."""

    platform: Platform = field(default_factory=Platform.host)
    namespace: str = "default"
    containerd_address: str = DEFAULT_ADDRESS
    containerd_root: str = DEFAULT_ROOT
    podman_root: str = ""
    podman_runroot: str = ""
    docker_host: str = ""
    """Empty: the environment's DOCKER_HOST or the default socket."""


@dataclass(frozen=True)
class ImageTarget:
    text: str
    kind: str
    reference: str

    @staticmethod
    def parse(text: str) -> ImageTarget | None:
        """The image target ``text`` names, or None when it is not one (a path, a container)."""
        prefix, sep, rest = text.partition(":")
        if not sep or prefix not in IMAGE_PREFIXES or text.startswith(("/", ".")):
            return None
        if not rest:
            raise ImageError(f"{escape_text(text)}: nothing after '{prefix}:'; write {IMAGE_PREFIXES[prefix]}")
        return ImageTarget(text, prefix, rest)


def is_image_target(text: str) -> bool:
    prefix, sep, _ = text.partition(":")
    return bool(sep) and prefix in IMAGE_PREFIXES and not text.startswith(("/", "."))


def _path_and_ref(reference: str, must_be_dir: bool) -> tuple[Path, str]:
    path = Path(reference)
    ok = path.is_dir() if must_be_dir else path.exists()
    if ok:
        return path, ""
    head, ref = split_reference(reference)
    if ref and (Path(head).is_dir() if must_be_dir else Path(head).exists()):
        return Path(head), ref
    raise ImageError(f"{escape_text(reference)}: no such {'directory' if must_be_dir else 'file'}")


def scan_archive_file(scanner: ImageScanner, path: Path, *, want: str = "",
                      platform: Platform | None = None) -> ImageReport:
    """``docker-archive:FILE``: streamed from the file like the daemon's export (gzip allowed)."""
    if not path.is_file():
        raise ImageError(f"{escape_text(str(path))}: not a regular file")

    @contextmanager
    def opener() -> Iterator[Readable]:
        try:
            f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ImageError(f"{escape_text(str(path))}: cannot read: {exc.strerror}") from None
        try:
            yield f
        finally:
            f.close()

    return ArchiveStreamScan(scanner, opener, source="docker-archive", name=str(path), want=want,
                             platform=platform).run()


def docker_client(options: ImageOptions) -> Any:
    import docker

    try:
        if options.docker_host:
            return docker.DockerClient(base_url=options.docker_host, timeout=300)
        return docker.from_env(timeout=300)
    except docker.errors.DockerException as exc:
        raise ImageError(f"cannot reach the Docker daemon: {exc}") from None


def scan_image_target(target: ImageTarget, scanner: ImageScanner, options: ImageOptions | None = None, *,
                      client: Any = None) -> ImageReport:
    """Scan one image target; raises :class:`ImageError` when the image cannot be read at all."""
    opts = options or ImageOptions()
    if target.kind == "image":
        own = client is None
        if own:  # the warm path: every layer cached, answered without loading the Docker SDK
            attrs = dockerapi.inspect_image(target.reference, opts.docker_host)
            hit = cached_docker_image(scanner, target.reference, attrs) if attrs is not None else None
            if hit is not None:
                return hit
        cl = docker_client(opts) if own else client
        try:
            return scan_docker_image(scanner, target.reference, cl)
        finally:
            if own:
                cl.close()
    if target.kind == "docker-archive":
        path, ref = _path_and_ref(target.reference, must_be_dir=False)
        return scan_archive_file(scanner, path, want=ref, platform=opts.platform)
    if target.kind == "oci":
        path, ref = _path_and_ref(target.reference, must_be_dir=True)
        return scan_oci_dir(scanner, path, want=ref, platform=opts.platform)
    if target.kind == "containerd":
        cd = Containerd(address=opts.containerd_address, root=opts.containerd_root, namespace=opts.namespace)
        return scan_containerd(scanner, target.reference, cd=cd, platform=opts.platform)
    if target.kind == "podman":
        return scan_podman_image(scanner, target.reference,
                                 Podman(root=opts.podman_root, runroot=opts.podman_runroot))
    raise ImageError(f"unknown image target kind {target.kind!r}")


def env_options(options: ImageOptions) -> ImageOptions:
    """Honour CONTAINERD_ADDRESS like ctr does, when the configuration left the default."""
    from dataclasses import replace

    addr = os.environ.get("CONTAINERD_ADDRESS")
    if addr and options.containerd_address == DEFAULT_ADDRESS:
        return replace(options, containerd_address=addr)
    return options
