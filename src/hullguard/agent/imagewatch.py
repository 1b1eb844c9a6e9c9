"""Detect mode: follow Docker events and scan the image of every new container.

When a container is created or started from an image not yet scanned with the current
signatures, the image is scanned (through the layer cache, so shared layers cost nothing)
and each detection is journaled with the container's ``docker://IMAGE@ID/path`` URI, the
layer and whether the file is hidden in the image history. A container is reported once
(the first create or start seen, or the start of the agent for containers that exist
already); a later signature update makes the image new again.

:func:`start_image_watch` is the one call the daemon needs; :func:`start_image_gate` adds
the blocking authorization plugin in ``gate = "block"`` mode.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from hullguard.agent.authzplugin import AuthzPluginServer
from hullguard.agent.config import Config
from hullguard.agent.imagegate import ImageGate, ImageJudge
from hullguard.agent.imagerecords import finding_record, layer_cache_path
from hullguard.engine.engine import Engine
from hullguard.engine.holder import EngineHolder
from hullguard.journal.record import DetectionRecord, Module
from hullguard.objects.images.layerwalk import StreamScanner
from hullguard.objects.images.manifest import ImageError
from hullguard.objects.layercache import LayerCache
from hullguard.objects.scanobject import ScanEvent
from hullguard.objects.uri import ObjectURI
from hullguard.response.actions import Action

log = logging.getLogger(__name__)

WATCHED_ACTIONS = ("create", "start")
RESYNC = "resync"
"""A queue item of the watch's own: check every container the daemon has now."""
MAX_SEEN = 100_000


class ImageWatch:
    """Consumes container events (from ``runtime.docker.DockerEventFollower``) on its own thread."""

    def __init__(self, judge: ImageJudge, journal: Any, *, follower_factory: Callable[..., Any] | None = None
                 ) -> None:
        self.judge = judge
        self.journal = journal
        self._queue: queue.Queue[tuple[str, str, dict[str, str]] | None] = queue.Queue(maxsize=10_000)
        self._seen: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="hullguard-imagewatch", daemon=True)
        self._follower: Any = None
        self._follower_factory = follower_factory
        self.scanned = 0
        self.recorded = 0
        self.idle = threading.Event()

    def start(self) -> None:
        self._thread.start()
        if self._follower_factory is not None:
            self._follower = self._follower_factory(self.on_event, self.on_resync)
            self._follower.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        self._queue.put(None)
        self._thread.join(timeout=10)

    def on_resync(self) -> None:
        """Called after (re)connecting to dockerd, at start too: the containers created while the
        agent was down (or dockerd's event stream was) are checked, since Docker does not
        replay the events missed meanwhile. Listing runs on the watch thread, not the follower's."""
        try:
            self._queue.put_nowait((RESYNC, "", {}))
        except queue.Full:
            log.warning("image watch: queue full, existing containers not checked")

    def _resync(self) -> None:
        for c in self.judge.client().api.containers(all=True):
            cid = str(c.get("Id", ""))
            if cid and cid not in self._seen:
                try:
                    self._check(cid, {"image": str(c.get("Image", ""))})
                except Exception:
                    log.exception("image watch: checking container %s failed", cid[:12])

    def on_event(self, action: str, container_id: str, attrs: dict[str, str]) -> None:
        if action in WATCHED_ACTIONS and container_id not in self._seen:
            try:
                self._queue.put_nowait((action, container_id, attrs))
            except queue.Full:
                log.warning("image watch: queue full, container %s not checked", container_id[:12])

    def _run(self) -> None:
        while True:
            self.idle.set() if self._queue.empty() else self.idle.clear()
            item = self._queue.get()
            if item is None:
                return
            self.idle.clear()
            action, cid, attrs = item
            try:
                if action == RESYNC:
                    self._resync()
                else:
                    self._check(cid, attrs)
            except Exception:
                log.exception("image watch: checking container %s failed", cid[:12] or "(existing)")

    def _check(self, cid: str, attrs: dict[str, str]) -> None:
        if cid in self._seen:
            return
        if len(self._seen) > MAX_SEEN:
            self._seen.clear()
        self._seen.add(cid)
        import docker.errors

        try:
            cattrs = self.judge.client().api.inspect_container(cid)
        except docker.errors.NotFound:
            return
        image_id = str(cattrs.get("Image", ""))
        image_name = str((cattrs.get("Config") or {}).get("Image", "")) or attrs.get("image", image_id)
        name = str(cattrs.get("Name", "")).lstrip("/")
        info = self.judge.inspect(image_id)
        if info is None:
            return
        report = self.judge.cached(info)
        if report is None:
            try:
                report = self.judge.submit(info).result()
            except ImageError as exc:
                log.warning("image watch: image %s of container %s cannot be scanned: %s", image_name, name, exc)
                return
            self.scanned += 1
        for f in report.findings:
            uri = ObjectURI.docker(image_name, cid, f.path).child(*f.verdict.inner)
            rec = finding_record(report, f, module=Module.IMAGE.value, event=ScanEvent.DEPLOYED,
                                 action=Action.RETAINED, uri=uri, container_id=cid, container_name=name)
            if self.journal is not None:
                self.journal.add(rec)
            self.recorded += 1


def _client_factory(config: Config) -> Callable[[], Any]:
    def make() -> Any:
        import docker

        return docker.from_env(timeout=300)

    del config
    return make


def make_judge(engine: Callable[[], StreamScanner], config: Config,
               client_factory: Callable[[], Any] | None = None) -> ImageJudge:
    cache = LayerCache.open(layer_cache_path(config))
    return ImageJudge(engine, cache, client_factory or _client_factory(config))


def start_image_watch(engine: Callable[[], StreamScanner], journal: Any, config: Config, *,
                      client_factory: Callable[[], Any] | None = None,
                      judge: ImageJudge | None = None) -> ImageWatch:
    """Start detect mode: ``engine`` returns the current engine (e.g. ``lambda: holder.engine``).

    Returns the running watch; call ``.stop()`` at shutdown.
    """
    from hullguard.runtime.docker import DockerEventFollower

    j = judge or make_judge(engine, config, client_factory)

    def follower(on_event: Callable[[str, str, dict[str, str]], None], on_resync: Callable[[], None]) -> Any:
        if client_factory is not None:
            return DockerEventFollower(on_event, on_resync, client_factory)
        return DockerEventFollower(on_event, on_resync)

    watch = ImageWatch(j, journal, follower_factory=follower)
    watch.start()
    return watch


def start_image_gate(engine: Callable[[], StreamScanner], journal: Any, config: Config, *,
                     client_factory: Callable[[], Any] | None = None,
                     judge: ImageJudge | None = None) -> AuthzPluginServer:
    """Serve the authorization plugin (block mode) at ``images.plugin_dir/images.plugin_name.sock``."""
    cfg = config.images
    j = judge or make_judge(engine, config, client_factory)
    gate = ImageGate(j, unscanned=cfg.gate_unscanned, timeout=cfg.gate_scan_timeout, journal=journal)
    server = AuthzPluginServer(cfg.plugin_name, gate, cfg.plugin_dir)
    server.start()
    return server


class _SubmitJournal:
    """The watch and the gate call ``journal.add``; in the agent records go through its writer thread."""

    def __init__(self, submit: Callable[[Callable[[], DetectionRecord | None]], None]) -> None:
        self._submit = submit

    def add(self, record: DetectionRecord) -> int:
        self._submit(lambda: record)
        return 0


class ImageServices:
    """What the agent runs for ``[images] gate``: detect mode watches Docker events and records;
    block mode also serves the authorization plugin. Both share one judge (one layer cache, one
    scan per image however many requests wait) and an in-process engine that :meth:`reload`
    replaces, so after SIGHUP every image counts as not scanned with the current signatures.
    """

    def __init__(self, config: Config, submit: Callable[[Callable[[], DetectionRecord | None]], None],
                 *, client_factory: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.mode = config.images.gate
        self.holder = EngineHolder(Engine.from_config(config.engine))  # SignatureError is a ValueError
        self.journal = _SubmitJournal(submit)
        self._client_factory = client_factory
        self.judge: ImageJudge | None = None
        self.watch: ImageWatch | None = None
        self.gate: AuthzPluginServer | None = None

    def current(self) -> StreamScanner:
        return self.holder.engine

    def start(self, connect_wait: float = 5.0) -> None:
        """Start; waits up to ``connect_wait`` s for the Docker event stream, so that once the agent
        says it is ready, containers created from then on are seen (dockerd down: it reconnects later)."""
        if self.mode == "off":
            return
        self.judge = make_judge(self.current, self.config, self._client_factory)
        self.watch = start_image_watch(self.current, self.journal, self.config,
                                       client_factory=self._client_factory, judge=self.judge)
        if self.mode == "block":
            self.gate = start_image_gate(self.current, self.journal, self.config,
                                         client_factory=self._client_factory, judge=self.judge)
        follower = self.watch._follower
        if follower is not None:
            follower.connected.wait(connect_wait)

    def reload(self) -> str:
        """Load the signatures again; returns "" or why the old ones stay in use."""
        try:
            new = Engine.from_config(self.config.engine)
        except (ValueError, OSError) as exc:
            log.error("image scanning: signature reload failed, the loaded signatures stay in use: %s", exc)
            return str(exc)
        self.holder.reload(new)  # the old engine may be dropped on any thread (engine/yararules.py)
        return ""

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.stop()
        if self.watch is not None:
            self.watch.stop()
        if self.judge is not None:
            self.judge.close()
