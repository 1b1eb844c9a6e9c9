"""Mount table reading and a watcher that wakes up when a filesystem is mounted.

Why watch mounts when Docker sends events: dockerd mounts a container's overlay *before* it
creates the task, and reports ``start`` only after the process already runs. A ``RUN`` step of
an image build can write and close a file in those few milliseconds. ``poll()`` on
``/proc/self/mountinfo`` reports every change of the mount table, so marking a new overlay
from there closes that window; the Docker events still tell which container it belongs to.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("hullguard.runtime.mounts")

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as ``\\ooo``."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    device: str
    """``major:minor`` as the kernel reports it (matches ``st_dev`` of files on it)."""
    root: str
    mount_point: str
    fstype: str
    source: str

    @property
    def st_dev(self) -> int:
        major, _, minor = self.device.partition(":")
        return os.makedev(int(major), int(minor))


def parse_mountinfo(text: str) -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        a = left.split(" ")
        b = right.split(" ")
        if len(a) < 5 or len(b) < 2:
            continue
        try:
            mount_id = int(a[0])
        except ValueError:
            continue
        mounts.append(Mount(mount_id, a[2], unescape(a[3]), unescape(a[4]), b[0], unescape(b[1])))
    return mounts


def read_mounts(path: str = "/proc/self/mountinfo") -> list[Mount]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


class MountWatcher:
    """Calls ``on_change(mounts)`` with the full table each time it changes (and once at start)."""

    def __init__(self, on_change: Callable[[list[Mount]], None], path: str = "/proc/self/mountinfo") -> None:
        self._on_change = on_change
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hullguard-mounts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def _run(self) -> None:
        try:
            f = open(self._path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - polled
        except OSError as exc:
            log.warning("cannot watch mounts: %s", exc)
            return
        with f:
            poller = select.poll()
            poller.register(f.fileno(), select.POLLPRI | select.POLLERR)
            while not self._stop.is_set():
                f.seek(0)
                try:
                    self._on_change(parse_mountinfo(f.read()))
                except Exception:
                    log.exception("mount change handler failed")
                while not self._stop.is_set() and not poller.poll(250):
                    pass
