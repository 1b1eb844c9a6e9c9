"""What an image scan reports: per layer, per finding, and for the image as a whole."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hullguard.engine.verdict import Verdict, VerdictKind
from hullguard.objects.uri import ObjectURI

HIDDEN_TEXT = "hidden in image history"

UriMaker = Callable[[str, str], ObjectURI]
"""(layer digest, absolute path in the layer) -> the finding's URI."""


@dataclass(frozen=True)
class ImageRef:
    """Which image, how it is named in URIs, and where it came from."""

    source: str
    """docker, docker-archive, oci, containerd, podman."""
    name: str
    """The name users know (tag, file path, ``NAME`` in containerd)."""
    image_id: str = ""
    """Config digest (the image id Docker shows)."""
    manifest_digest: str = ""
    platform: str = ""
    namespace: str = ""

    def uri(self, layer: str, path: str) -> ObjectURI:
        if self.source == "containerd":
            return ObjectURI.containerd(self.namespace, self.name, layer, path)
        if self.source == "podman":
            return ObjectURI("podman", path, image=self.name, ref=layer)
        return ObjectURI.docker_image(self.name, layer, path)


@dataclass(frozen=True)
class LayerReport:
    index: int
    diff_id: str
    """The uncompressed digest: computed when the layer was read, else the config's."""
    status: str
    """scanned, cached, missing, corrupt."""
    size: int = 0
    files: int = 0
    scanned_bytes: int = 0
    blob_digest: str = ""
    expected_diff_id: str = ""
    problems: tuple[str, ...] = ()
    """Digest mismatches and other integrity problems (each also a not-scanned finding)."""
    anomalies: tuple[str, ...] = ()
    anomaly_count: int = 0


@dataclass(frozen=True)
class ImageFinding:
    """A detection or not-scanned outcome at ``path`` of layer ``layer_index``.

    ``verdict.detail`` carries the layer and the hidden-in-history note, so it reaches every
    output that shows a verdict; ``hidden_by`` is the index of the layer that hides the file.
    """

    uri: ObjectURI
    layer_index: int
    layer_digest: str
    path: str
    verdict: Verdict
    hidden_by: int | None = None
    hidden_how: str = ""

    @property
    def hidden(self) -> bool:
        return self.hidden_by is not None

    @property
    def info(self) -> str:
        """Text for the journal's Info column: layer, digest, hidden note (engine tags go first)."""
        return self.verdict.detail


@dataclass(frozen=True)
class ImageReport:
    ref: ImageRef
    layers: tuple[LayerReport, ...] = ()
    findings: tuple[ImageFinding, ...] = ()
    error: str = ""
    """Set when the image could not be scanned at all (nothing else is then reported)."""
    elapsed: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def detections(self) -> tuple[ImageFinding, ...]:
        return tuple(f for f in self.findings if f.verdict.kind is VerdictKind.DETECTED)

    @property
    def not_scanned(self) -> tuple[ImageFinding, ...]:
        return tuple(f for f in self.findings if f.verdict.kind is VerdictKind.NOT_SCANNED)

    @property
    def files(self) -> int:
        return sum(layer.files for layer in self.layers)

    @property
    def scanned_bytes(self) -> int:
        return sum(layer.scanned_bytes for layer in self.layers)

    @property
    def cached_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.status == "cached")
