"""Docker metadata the real-time monitor needs, cached, and a follower of Docker's event stream.

The monitor sees a container only as a cgroup id or an overlay superblock; the names that go
into the journal (container name, image ``NAME:TAG``) and the overlay ``MergedDir`` that gets
marked come from the Docker API. Inspecting is far too slow for the answering path, so every
container is inspected once and kept until it is destroyed.

The event follower reconnects when dockerd restarts (with a growing pause, capped), and calls
``on_resync`` after every (re)connect so the caller can compare its marks with the containers
that actually run — events missed while dockerd was down are not lost that way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

log = logging.getLogger("hullguard.runtime.docker")

ClientFactory = Callable[[], docker.DockerClient]


def default_client() -> docker.DockerClient:
    return docker.from_env(timeout=30)


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    """The image as the journal shows it: ``NAME:TAG`` (``:latest`` added), or the image id."""
    image_id: str
    merged_dir: str
    upper_dir: str
    pid: int
    running: bool


def image_display(config_image: str, image_id: str) -> str:
    """``NAME:TAG`` for a reference; unchanged for ids and digests; the id when empty."""
    ref = config_image or image_id
    if not ref or ref.startswith("sha256:") or "@" in ref:
        return ref
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return ref + ":latest"
    return ref


def info_from_attrs(attrs: dict[str, Any]) -> ContainerInfo:
    """A :class:`ContainerInfo` from ``docker inspect`` output (missing parts become empty)."""
    config = attrs.get("Config") or {}
    state = attrs.get("State") or {}
    graph = (attrs.get("GraphDriver") or {}).get("Data") or {}
    image_id = str(attrs.get("Image") or "")
    return ContainerInfo(
        id=str(attrs.get("Id") or ""),
        name=str(attrs.get("Name") or "").lstrip("/"),
        image=image_display(str(config.get("Image") or ""), image_id),
        image_id=image_id,
        merged_dir=str(graph.get("MergedDir") or ""),
        upper_dir=str(graph.get("UpperDir") or ""),
        pid=int(state.get("Pid") or 0),
        running=bool(state.get("Running")),
    )


class DockerMetadata:
    """id -> :class:`ContainerInfo`, cached; safe to call from several threads."""

    def __init__(self, client_factory: ClientFactory = default_client) -> None:
        self._factory = client_factory
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()
        self._cache: dict[str, ContainerInfo] = {}
        self._misses: dict[str, float] = {}
        self._gone: dict[str, float] = {}
        """Destroyed containers, kept for :attr:`linger` seconds (see :meth:`forget`)."""
        self.linger = 120.0

    def _api(self) -> Any:
        if self._client is None:
            self._client = self._factory()
        return self._client.api

    def _reset(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None

    def inspect(self, container_id: str) -> ContainerInfo | None:
        """Ask the daemon (no cache); None when the container does not exist or Docker is down."""
        try:
            with self._lock:
                attrs = self._api().inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        except Exception as exc:
            log.debug("docker inspect %s: %s", container_id, exc)
            with self._lock:
                self._reset()
            return None
        info = info_from_attrs(attrs)
        if info.id:
            self._cache[info.id] = info
        return info

    def get(self, container_id: str) -> ContainerInfo | None:
        """Cached; a miss is asked once per second at most, so a busy unknown id costs little."""
        info = self._cache.get(container_id)
        if info is not None:
            return info
        now = time.monotonic()
        if now - self._misses.get(container_id, 0.0) < 1.0:
            return None
        self._misses[container_id] = now
        return self.inspect(container_id)

    def cached(self, container_id: str) -> ContainerInfo | None:
        return self._cache.get(container_id)

    def update(self, info: ContainerInfo) -> None:
        self._cache[info.id] = info

    def forget(self, container_id: str) -> None:
        """The container was destroyed; its name and image are still kept for a while.

        Journal records are built after the answer, and a scan may end after the container
        is gone (``docker rm -f`` during the scan of a large file): the record must still
        name the image and the container. Entries older than :attr:`linger` are dropped here.
        """
        now = time.monotonic()
        if container_id in self._cache:
            self._gone[container_id] = now
        for cid, when in list(self._gone.items()):
            if now - when > self.linger:
                self._gone.pop(cid, None)
                self._cache.pop(cid, None)

    def by_merged_dir(self, merged_dir: str) -> ContainerInfo | None:
        for info in list(self._cache.values()):
            if info.merged_dir == merged_dir:
                return info
        for info in self.list(all_states=True):
            if info.merged_dir == merged_dir:
                return info
        return None

    def list(self, *, all_states: bool = False) -> list[ContainerInfo]:
        """Inspect the running (or all) containers; [] when Docker does not answer."""
        try:
            with self._lock:
                summaries = self._api().containers(all=all_states, quiet=True)
        except Exception as exc:
            log.debug("docker ps: %s", exc)
            with self._lock:
                self._reset()
            return []
        out: list[ContainerInfo] = []
        for s in summaries:
            cid = str(s.get("Id") or "")
            cached = self._cache.get(cid)
            info = cached if cached is not None and cached.running else self.inspect(cid)
            if info is not None:
                out.append(info)
        return out

    def root_dir(self) -> str:
        try:
            with self._lock:
                return str(self._api().info().get("DockerRootDir") or "/var/lib/docker")
        except Exception:
            with self._lock:
                self._reset()
            return "/var/lib/docker"

    def close(self) -> None:
        with self._lock:
            self._reset()


EventHandler = Callable[[str, str, dict[str, Any]], None]
"""``(action, container_id, attributes)`` for container events (start, die, destroy, ...)."""


class DockerEventFollower:
    """A thread that follows ``docker events`` for containers and survives dockerd restarts."""

    def __init__(self, on_event: EventHandler, on_resync: Callable[[], None],
                 client_factory: ClientFactory = default_client, *, max_backoff: float = 5.0) -> None:
        self._on_event = on_event
        self._on_resync = on_resync
        self._factory = client_factory
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._stream: Any = None
        self._client: docker.DockerClient | None = None
        self._thread = threading.Thread(target=self._run, name="hullguard-docker-events", daemon=True)
        self.connected = threading.Event()
        self.reconnects = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._stream is not None:
                self._stream.close()
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.close()
        self._thread.join(timeout=5)

    def _events(self) -> Iterator[dict[str, Any]]:
        self._client = self._factory()
        self._stream = self._client.events(decode=True, filters={"type": "container"})
        stream: Iterator[dict[str, Any]] = self._stream
        return stream

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                events = self._events()
                self.connected.set()
                self._safe(self._on_resync)
                backoff = 0.2
                for ev in events:
                    if self._stop.is_set():
                        break
                    actor = ev.get("Actor") or {}
                    cid = str(actor.get("ID") or ev.get("id") or "")
                    action = str(ev.get("Action") or ev.get("status") or "")
                    if cid and action:
                        attrs = dict(actor.get("Attributes") or {})
                        self._safe(functools.partial(self._on_event, action, cid, attrs))
            except Exception as exc:
                log.info("docker events: %s", exc)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    if self._client is not None:
                        self._client.close()
                self._client = None
                self._stream = None
            if self._stop.is_set():
                return
            self.reconnects += 1
            self._stop.wait(backoff)
            backoff = min(self._max_backoff, backoff * 2)

    @staticmethod
    def _safe(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("docker event handler failed")
