"""Image scan reports as journal records, and the shared way the agent and CLI scan an image.

An image is never modified: detections are recorded with the action ``Retained`` (the
policy's ``report`` for the image scope); the deployment gate records ``Blocked`` when it
refuses a container.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hullguard.agent.config import Config, ImagesConfig
from hullguard.engine.verdict import Detection, NotScannedReason, VerdictKind
from hullguard.journal.record import DetectionRecord, Level, Module, RecordKind
from hullguard.objects.images.api import ImageOptions, env_options
from hullguard.objects.images.manifest import Platform
from hullguard.objects.images.model import ImageFinding, ImageReport
from hullguard.objects.scanobject import ScanEvent
from hullguard.objects.uri import ObjectURI
from hullguard.response.actions import Action


def image_options(cfg: ImagesConfig, *, namespace: str | None = None, platform: str | None = None) -> ImageOptions:
    plat = platform or cfg.platform
    return env_options(ImageOptions(
        platform=Platform.parse(plat) if plat else Platform.host(),
        namespace=namespace or cfg.containerd_namespace,
        containerd_address=cfg.containerd_address, containerd_root=cfg.containerd_root,
        podman_root=cfg.podman_root, podman_runroot=cfg.podman_runroot))


def layer_cache_path(config: Config) -> Path:
    return config.state_path / "cache" / "layers.db"


def finding_record(report: ImageReport, f: ImageFinding, *, module: str = Module.IMAGE.value,
                   event: ScanEvent = ScanEvent.ON_DEMAND, action: Action = Action.RETAINED,
                   uri: ObjectURI | None = None, user: str = "", process: str = "hullguard",
                   container_id: str = "", container_name: str = "", session_id: int | None = None
                   ) -> DetectionRecord:
    """One journal record; ``uri`` replaces the layer URI (a container's ``docker://`` URI)."""
    shown = (uri or f.uri).display()
    base = DetectionRecord(
        module=module, object=shown, user=user, process=process, event=event.value,
        image=report.ref.name, layer=f.layer_digest, container_id=container_id,
        container_name=container_name, session_id=session_id)
    v = f.verdict
    if v.kind is VerdictKind.DETECTED:
        det = v.detection or Detection("unknown", "unknown")
        tags = det.tags or Detection.make_tags(det.name, det.type, det.suspicion)
        return replace(base, detection=det.name, type=det.type, level=Level.ERROR.value, sha1=v.sha1,
                       kind=RecordKind.DETECTION, action=action.value, info=f"{tags} {v.detail}".strip())
    reason = v.reason.value if v.reason else NotScannedReason.ERROR.value
    return replace(base, level=Level.WARNING.value, kind=RecordKind.NOT_SCANNED,
                   action=Action.NOT_SCANNED.value, info=f"{reason}: {v.detail}" if v.detail else reason)


def error_record(target: str, message: str, *, module: str = Module.IMAGE.value,
                 event: ScanEvent = ScanEvent.ON_DEMAND, session_id: int | None = None) -> DetectionRecord:
    """An image that could not be read at all (bad reference, missing manifest)."""
    return DetectionRecord(module=module, object=target, level=Level.WARNING.value,
                           kind=RecordKind.NOT_SCANNED, action=Action.NOT_SCANNED.value,
                           info=f"{NotScannedReason.UNREADABLE.value}: {message}", event=event.value,
                           process="hullguard", session_id=session_id)
