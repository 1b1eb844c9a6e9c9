"""Which filesystems the monitor marks, and what each marked filesystem is.

A filesystem mark sees every file on one superblock, so a mark is identified by ``st_dev``:
an event's file is looked up by the device it lies on to learn whether it is a host file or
a file of a container (and which one).

Container overlays are marked through an ``O_PATH`` fd of the ``MergedDir`` after checking
that the fd really is the overlay mount the mount table lists: a ``MergedDir`` that was just
unmounted is a plain directory on the host's disk, and marking *its* filesystem would turn
on protection for the whole host by accident. Removal goes through the same check; a
superblock that is gone has lost its marks in the kernel already.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from hullguard.realtime.fanotify import Fanotify, FanotifyError
from hullguard.runtime.mounts import Mount, read_mounts

log = logging.getLogger("hullguard.realtime.marks")

# not O_PATH: fanotify_mark() with a NULL path needs a real open file behind the fd
_PATH_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class MarkTarget:
    kind: str
    """``host`` or ``container``."""
    dev: int
    path: str
    """The configured host path, or the container's ``MergedDir``."""
    container_id: str = ""


class MarkManager:
    """Adds and removes filesystem marks; maps ``st_dev`` to what was marked."""

    def __init__(self, fan: Fanotify, mask: int) -> None:
        self._fan = fan
        self.mask = mask
        self._lock = threading.Lock()
        self._targets: dict[int, MarkTarget] = {}

    def target(self, dev: int) -> MarkTarget | None:
        return self._targets.get(dev)

    def targets(self) -> list[MarkTarget]:
        with self._lock:
            return list(self._targets.values())

    def containers(self) -> dict[str, MarkTarget]:
        with self._lock:
            return {t.path: t for t in self._targets.values() if t.kind == "container"}

    def add_host(self, path: str) -> MarkTarget:
        """Mark the filesystem holding ``path``; raises FanotifyError/OSError with the path."""
        fd = os.open(path, _PATH_FLAGS)
        try:
            dev = os.fstat(fd).st_dev
            with self._lock:
                existing = self._targets.get(dev)
                if existing is not None and existing.kind == "host":
                    return existing
                self._fan.mark_filesystem(fd, self.mask)
                target = MarkTarget("host", dev, path)
                self._targets[dev] = target
                return target
        finally:
            os.close(fd)

    def add_overlay(self, merged_dir: str, container_id: str = "",
                    mounts: list[Mount] | None = None) -> MarkTarget | None:
        """Mark a container overlay; None when ``merged_dir`` is not (or no longer) an overlay mount."""
        table = mounts if mounts is not None else read_mounts()
        mount = next((m for m in reversed(table) if m.mount_point == merged_dir), None)
        if mount is None or mount.fstype != "overlay":
            return None
        try:
            fd = os.open(merged_dir, _PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            dev = os.fstat(fd).st_dev
            if dev != mount.st_dev:
                return None
            with self._lock:
                existing = self._targets.get(dev)
                if existing is not None:
                    if container_id and not existing.container_id:
                        existing = MarkTarget("container", dev, merged_dir, container_id)
                        self._targets[dev] = existing
                    return existing
                try:
                    self._fan.mark_filesystem(fd, self.mask)
                except FanotifyError as exc:
                    log.warning("cannot mark %s: %s", merged_dir, exc)
                    return None
                target = MarkTarget("container", dev, merged_dir, container_id)
                self._targets[dev] = target
                log.info("protecting container filesystem %s %s", container_id[:12], merged_dir)
                return target
        finally:
            os.close(fd)

    def set_container(self, dev: int, container_id: str) -> None:
        with self._lock:
            t = self._targets.get(dev)
            if t is not None and t.kind == "container":
                self._targets[dev] = MarkTarget("container", dev, t.path, container_id)

    def remove_overlay(self, merged_dir: str) -> None:
        with self._lock:
            target = next((t for t in self._targets.values()
                           if t.kind == "container" and t.path == merged_dir), None)
            if target is None:
                return
            del self._targets[target.dev]
            try:
                fd = os.open(merged_dir, _PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                return
            try:
                if os.fstat(fd).st_dev == target.dev:
                    self._fan.unmark_filesystem(fd, self.mask)
            except OSError as exc:
                log.debug("unmark %s: %s", merged_dir, exc)
            finally:
                os.close(fd)

    def forget_missing(self, mounts: list[Mount]) -> list[MarkTarget]:
        """Drop container targets whose overlay is no longer mounted (the kernel dropped the mark)."""
        live = {m.st_dev for m in mounts if m.fstype == "overlay"}
        gone: list[MarkTarget] = []
        with self._lock:
            for dev, t in list(self._targets.items()):
                if t.kind == "container" and dev not in live:
                    del self._targets[dev]
                    gone.append(t)
        return gone
