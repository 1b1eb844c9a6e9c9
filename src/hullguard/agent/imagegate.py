"""The deployment gate for Docker: judge the image of every container before it is created or started.

:class:`ImageJudge` knows, per image, the scan result for the current signatures: from the
layer cache when every layer is in it (no reading at all), otherwise by scanning the image
through the daemon's export, once, however many requests ask at the same time.

:class:`ImageGate` is the authorization plugin's decision: ``POST /containers/create`` and
``POST /containers/{id}/start|restart`` are checked, everything else passes untouched. A
create whose body dockerd did not forward (over 1 MiB or not JSON: the CVE-2024-41110 class
of bypass) or whose body is cut short is refused, since the image it names cannot be known.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from hullguard.agent.authzplugin import AuthDecision, AuthRequest
from hullguard.agent.imagerecords import finding_record
from hullguard.journal.record import Module
from hullguard.objects.images.daemon import from_cache, scan_docker_image
from hullguard.objects.images.layerwalk import StreamScanner
from hullguard.objects.images.manifest import ImageError
from hullguard.objects.images.model import ImageRef, ImageReport
from hullguard.objects.images.scanner import ImageScanner
from hullguard.objects.layercache import LayerCache
from hullguard.objects.scanobject import ScanEvent
from hullguard.objects.uri import ObjectURI, escape_text
from hullguard.response.actions import Action

log = logging.getLogger(__name__)

_START_RE = re.compile(r"^/containers/(?P<id>[^/]+)/(?P<op>start|restart)$")
MAX_NAMED = 3
"""Detections named in a denial message; the journal has all of them."""


@dataclass(frozen=True)
class ImageInfo:
    id: str
    name: str
    diff_ids: tuple[str, ...]


class ImageJudge:
    """Scan results of Docker images for the current engine, shared by the gate and the watcher."""

    def __init__(self, engine: Callable[[], StreamScanner], cache: LayerCache,
                 client_factory: Callable[[], Any], *, workers: int = 1) -> None:
        self._engine = engine
        self._cache = cache
        self._client_factory = client_factory
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], cf.Future[ImageReport]] = {}
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hullguard-imagescan")
        self._local = threading.local()

    def client(self) -> Any:
        cl = getattr(self._local, "client", None)
        if cl is None:
            cl = self._client_factory()
            self._local.client = cl
        return cl

    def inspect(self, image: str) -> ImageInfo | None:
        import docker.errors

        try:
            attrs = self.client().api.inspect_image(image)
        except docker.errors.ImageNotFound:
            return None
        layers = tuple(str(x) for x in (attrs.get("RootFS") or {}).get("Layers") or ())
        tags = attrs.get("RepoTags") or []
        name = image if not image.startswith("sha256:") else (str(tags[0]) if tags else image)
        return ImageInfo(str(attrs.get("Id", "")), name, layers)

    def cached(self, info: ImageInfo) -> ImageReport | None:
        """The result without scanning: every layer is in the cache for the current signatures."""
        scanner = ImageScanner(self._engine(), self._cache)
        return from_cache(scanner, ImageRef("docker", info.name, image_id=info.id), info.diff_ids)

    def submit(self, info: ImageInfo) -> cf.Future[ImageReport]:
        engine = self._engine()
        key = (info.id, engine.db_version)
        with self._lock:
            fut = self._running.get(key)
            if fut is None or (fut.done() and fut.exception() is not None):
                fut = self._pool.submit(self._scan, info, engine)
                self._running[key] = fut
                fut.add_done_callback(functools.partial(self._forget, key))
            return fut

    def _forget(self, key: tuple[str, str], fut: cf.Future[ImageReport]) -> None:
        with self._lock:
            if self._running.get(key) is fut:
                del self._running[key]

    def _scan(self, info: ImageInfo, engine: StreamScanner) -> ImageReport:
        return scan_docker_image(ImageScanner(engine, self._cache), info.id, self.client())

    def judge(self, info: ImageInfo, timeout: float | None) -> ImageReport | None:
        """The image's report, scanning it if needed; None when the scan takes longer than ``timeout``."""
        hit = self.cached(info)
        if hit is not None:
            return hit
        fut = self.submit(info)
        try:
            return fut.result(timeout=timeout)
        except cf.TimeoutError:
            return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def denial_message(report: ImageReport, image: str) -> str:
    dets = report.detections
    named = []
    for f in dets[:MAX_NAMED]:
        d = f.verdict.detection
        where = escape_text(f.path + "".join("!/" + m for m in f.verdict.inner))
        hidden = ", hidden in image history" if f.hidden else ""
        named.append(f"{d.name if d else '?'} in {where} (layer {f.layer_index}{hidden})")
    more = f" and {len(dets) - MAX_NAMED} more" if len(dets) > MAX_NAMED else ""
    return (f"hullguard: image {escape_text(image)} ({report.ref.image_id[:19]}) contains malware: "
            f"{'; '.join(named)}{more}. See `hullguard log --module image`.")


class ImageGate:
    """The authorization decision for one API request (see the module docstring)."""

    def __init__(self, judge: ImageJudge, *, unscanned: Literal["scan", "deny", "allow"] = "scan",
                 timeout: float = 20.0, journal: Any = None) -> None:
        self.judge = judge
        self.unscanned = unscanned
        self.timeout = timeout
        self.journal = journal

    def __call__(self, req: AuthRequest) -> AuthDecision:
        if req.method.upper() != "POST":
            return AuthDecision(True)
        path = req.path
        if path == "/containers/create":
            return self._create(req)
        m = _START_RE.match(path)
        if m:
            return self._start(m.group("id"), m.group("op"))
        return AuthDecision(True)

    def _create(self, req: AuthRequest) -> AuthDecision:
        if req.body is None:
            return AuthDecision(False, "hullguard: container create without a request body that the "
                                "plugin can check (body over 1 MiB or not JSON) is refused")
        declared = req.header("Content-Length")
        if declared.isdigit() and int(declared) != len(req.body):
            return AuthDecision(False, "hullguard: container create request body is cut short; refused")
        try:
            doc = json.loads(req.body)
        except ValueError:
            return AuthDecision(False, "hullguard: container create request body is not valid JSON "
                                "(cut short?); refused")
        image = doc.get("Image") if isinstance(doc, dict) else None
        if not isinstance(image, str) or not image:
            return AuthDecision(True)  # dockerd rejects a create without an image itself
        name = ""
        query = req.uri.partition("?")[2]
        for part in query.split("&"):
            k, _, v = part.partition("=")
            if k == "name":
                name = v
        return self._image(image, container=name, op="create")

    def _start(self, container: str, op: str) -> AuthDecision:
        import docker.errors

        try:
            attrs = self.judge.client().api.inspect_container(container)
        except docker.errors.NotFound:
            return AuthDecision(True)  # dockerd answers 404 itself
        image_id = str(attrs.get("Image", ""))
        name = str((attrs.get("Config") or {}).get("Image", "")) or image_id
        return self._image(image_id or name, container=str(attrs.get("Name", "")).lstrip("/"), op=op,
                           container_id=str(attrs.get("Id", "")), shown=name)

    def _image(self, image: str, *, container: str, op: str, container_id: str = "",
               shown: str = "") -> AuthDecision:
        try:
            info = self.judge.inspect(image)
        except Exception as exc:
            return AuthDecision(False, f"hullguard: cannot inspect image {escape_text(image)}: {exc}")
        if info is None:
            return AuthDecision(True)  # no such image: dockerd fails (and the CLI may pull, then ask again)
        shown = shown or image
        report = self.judge.cached(info)
        if report is None:
            if self.unscanned == "allow":
                self.judge.submit(info)
                return AuthDecision(True)
            if self.unscanned == "deny":
                self.judge.submit(info)
                return AuthDecision(False, f"hullguard: image {escape_text(shown)} has not been scanned "
                                    "yet; scanning it now, try again shortly")
            try:
                report = self.judge.judge(info, self.timeout)
            except ImageError as exc:
                return AuthDecision(False, f"hullguard: image {escape_text(shown)} cannot be scanned: {exc}")
            if report is None:
                return AuthDecision(False, f"hullguard: image {escape_text(shown)} is still being scanned; "
                                    "try again shortly")
        if not report.detections:
            return AuthDecision(True)
        self._record(report, container, container_id, shown)
        log.warning("blocked %s of a container from %s", op, shown)
        return AuthDecision(False, denial_message(report, shown))

    def _record(self, report: ImageReport, container: str, container_id: str, image: str) -> None:
        if self.journal is None:
            return
        for f in report.detections:
            uri = ObjectURI.docker(image, container_id, f.path).child(*f.verdict.inner) if container_id \
                else None
            rec = finding_record(report, f, module=Module.IMAGE.value, event=ScanEvent.DEPLOYED,
                                 action=Action.BLOCKED, uri=uri, container_id=container_id,
                                 container_name=container)
            try:
                self.journal.add(rec)
            except Exception:
                log.exception("cannot journal a blocked deployment")
