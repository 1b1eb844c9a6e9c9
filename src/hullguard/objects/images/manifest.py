"""Image metadata: OCI and Docker manifests, indexes (manifest lists), configs, platforms.

Only the fields a scan needs are read, and every one is validated, because a manifest is
input like any other: digests must be well formed before they name a file, lists must be
lists. Problems raise :class:`ImageError` with a message that says what is wrong.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass
from typing import Any

from hullguard.objects.images.digest import DigestError, check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
MAX_JSON = 16 * 1024 * 1024
"""Manifests, indexes and configs larger than this are refused (real ones are kilobytes)."""


class ImageError(ValueError):
    """An image that cannot be scanned as a whole (bad reference, unreadable metadata)."""


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @staticmethod
    def parse(text: str) -> Platform:
        """``os/arch[/variant]`` as in ``docker --platform``; ``arch`` alone means linux."""
        parts = [p.strip().lower() for p in text.split("/")]
        if not text or not all(parts) or len(parts) > 3:
            raise ImageError(f"invalid platform {text!r}: write OS/ARCH[/VARIANT], e.g. linux/arm64")
        if len(parts) == 1:
            parts = ["linux", *parts]
        arch = _ARCH_ALIASES.get(parts[1], parts[1])
        variant = parts[2] if len(parts) == 3 else ""
        if arch == "arm64" and variant == "v8":
            variant = ""
        return Platform(parts[0], arch, variant)

    @staticmethod
    def host() -> Platform:
        machine = _platform.machine().lower()
        arch = _ARCH_ALIASES.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
        return Platform("linux", arch, variant)

    def matches(self, other: dict[str, Any]) -> bool:
        arch = _ARCH_ALIASES.get(str(other.get("architecture", "")), str(other.get("architecture", "")))
        variant = str(other.get("variant", ""))
        if arch == "arm64" and variant == "v8":
            variant = ""
        if other.get("os") != self.os or arch != self.architecture:
            return False
        return not self.variant or not variant or variant == self.variant


_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
                 "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int = -1
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()

    @property
    def ref_name(self) -> str:
        return (self.annotations or {}).get(REF_NAME, "")


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    diff_ids: tuple[str, ...]
    os: str = ""
    architecture: str = ""
    history_count: int = 0


def load_json(data: bytes, what: str) -> Any:
    if len(data) > MAX_JSON:
        raise ImageError(f"{what}: {len(data)} bytes is too large for image metadata")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON ({exc})") from None


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError(f"{what}: expected a JSON object")
    return value


def descriptor(value: Any, what: str) -> Descriptor:
    d = _obj(value, what)
    try:
        digest = check_digest(str(d.get("digest", "")))
    except DigestError as exc:
        raise ImageError(f"{what}: {exc}") from None
    size = d.get("size", -1)
    plat = d.get("platform")
    ann = d.get("annotations")
    urls = d.get("urls") or ()
    return Descriptor(
        media_type=str(d.get("mediaType", "")),
        digest=digest,
        size=size if isinstance(size, int) and not isinstance(size, bool) else -1,
        platform=plat if isinstance(plat, dict) else None,
        annotations={str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else None,
        urls=tuple(str(u) for u in urls) if isinstance(urls, list) else (),
    )


def is_index(doc: dict[str, Any], media_type: str = "") -> bool:
    mt = media_type or str(doc.get("mediaType", ""))
    return mt in INDEX_TYPES or ("manifests" in doc and "layers" not in doc)


def index_entries(doc: dict[str, Any], what: str) -> list[Descriptor]:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ImageError(f"{what}: 'manifests' is not a list")
    return [descriptor(e, f"{what} manifests[{i}]") for i, e in enumerate(entries)]


def choose_platform(entries: list[Descriptor], wanted: Platform, what: str) -> Descriptor:
    """The manifest for ``wanted``; an index with a single unlabelled image needs no choice."""
    # Attestation manifests (buildkit) carry platform unknown/unknown: never an image to run.
    images = [e for e in entries if not (e.platform and e.platform.get("os") == "unknown")]
    if len(images) == 1 and not images[0].platform:
        return images[0]
    for e in images:
        if e.platform and wanted.matches(e.platform):
            return e
    have = ", ".join(sorted({_plat_text(e.platform) for e in images if e.platform})) or "none"
    raise ImageError(f"{what}: no image for platform {wanted} (available: {have}); use --platform")


def _plat_text(p: dict[str, Any] | None) -> str:
    if not p:
        return "?"
    return "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k))


def parse_manifest(data: bytes, what: str) -> Manifest:
    doc = _obj(load_json(data, what), what)
    if is_index(doc):
        raise ImageError(f"{what}: is an index, not an image manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: 'layers' is not a list")
    return Manifest(descriptor(doc.get("config"), f"{what} config"),
                    tuple(descriptor(d, f"{what} layers[{i}]") for i, d in enumerate(layers)))


def parse_config(data: bytes, what: str) -> ImageConfig:
    doc = _obj(load_json(data, what), what)
    rootfs = _obj(doc.get("rootfs"), f"{what} rootfs")
    ids = rootfs.get("diff_ids")
    if not isinstance(ids, list):
        raise ImageError(f"{what}: rootfs.diff_ids is not a list")
    try:
        diff_ids = tuple(check_digest(str(i)) for i in ids)
    except DigestError as exc:
        raise ImageError(f"{what}: rootfs.diff_ids: {exc}") from None
    history = doc.get("history")
    return ImageConfig(diff_ids, str(doc.get("os", "")), str(doc.get("architecture", "")),
                       len(history) if isinstance(history, list) else 0)


def split_reference(text: str) -> tuple[str, str]:
    """``PATH:REF`` -> (PATH, REF) when PATH ends in a plausible ref; used by oci:DIR[:REF]."""
    head, sep, tail = text.rpartition(":")
    if sep and head and tail and "/" not in tail:
        return head, tail
    return text, ""
