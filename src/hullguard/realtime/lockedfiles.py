"""The agent's own locked files: no event fd for them may ever be closed in this process.

POSIX record locks (``fcntl(F_SETLK)``, which SQLite uses for its journals) belong to the
process, and closing *any* descriptor of a file drops all of that process's locks on it. The
kernel opens a descriptor in this process for every fanotify event, and the monitor closes it
after answering. So when someone (``hullguard log``, a test, the agent itself) opened the
journal on a protected filesystem, the agent silently lost its locks on ``journal.db-shm``; the
next reader then believed it was the first connection, truncated the WAL index, and the agent's
writer died of SIGBUS on its mapping (seen in CI on a tmpfs holding the agent's state).

Two defences, so neither has to be perfect:

* a permanent, non-evictable ignore mark (surviving modification) on each such inode keeps the
  kernel from creating events, and descriptors, for it at all; it is placed before the
  filesystem marks and again after every flush of the verdict cache;
* an event descriptor that still refers to one of these inodes (an event queued before the mark,
  or during the instant between a flush and the new mark) is parked, never closed: a bounded
  number of descriptors leaks instead of the locks.

The files are never scanned in real time: they are the agent's own, like its other accesses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable

from hullguard.realtime.fanotify import Fanotify, FanotifyError

log = logging.getLogger("hullguard.realtime")

MAX_PARKED = 4096
"""Descriptors kept open at most; beyond that they are closed (and the loss logged)."""

Inode = tuple[int, int]
"""``(st_dev, st_ino)``."""


def sqlite_files(db: str | os.PathLike[str]) -> list[str]:
    """A WAL-mode SQLite database and the two files SQLite keeps open and locked beside it."""
    base = os.fspath(db)
    return [base, base + "-wal", base + "-shm"]


class LockedFiles:
    """Inodes the agent holds POSIX locks on, and the event descriptors parked for them."""

    def __init__(self, fan: Fanotify, mask: int) -> None:
        self._fan = fan
        self._mask = mask
        self._lock = threading.Lock()
        self._paths: dict[Inode, str] = {}
        self._parked: list[int] = []
        self._warned = False

    def __contains__(self, inode: Inode) -> bool:
        return inode in self._paths

    @property
    def parked(self) -> int:
        with self._lock:
            return len(self._parked)

    def add(self, paths: Iterable[str]) -> None:
        """Protect the files that exist now (a missing ``-wal``/``-shm`` is simply skipped)."""
        for path in paths:
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            with self._lock:
                self._paths[(st.st_dev, st.st_ino)] = path
            self._exempt(path)

    def remark(self) -> None:
        """Place every ignore mark again (after ``FAN_MARK_FLUSH`` dropped them)."""
        with self._lock:
            paths = list(self._paths.values())
        for path in paths:
            self._exempt(path)

    def _exempt(self, path: str) -> None:
        try:
            self._fan.exempt(os.fsencode(path), self._mask)
        except FanotifyError as exc:  # parking still keeps its locks, one descriptor per event
            log.warning("cannot exempt %s from real-time events: %s", path, exc)

    def close(self, fd: int, inode: Inode | None = None) -> None:
        """Close an event descriptor, unless it refers to a locked file (then it is parked).

        ``inode``: the file's, when the caller knows it already (no ``fstat`` then: this runs
        for every event).
        """
        if self._paths:
            if inode is None:
                try:
                    st = os.fstat(fd)
                    inode = (st.st_dev, st.st_ino)
                except OSError:
                    pass
            if inode in self._paths and self._park(fd):
                return
        os.close(fd)

    def _park(self, fd: int) -> bool:
        with self._lock:
            if len(self._parked) < MAX_PARKED:
                self._parked.append(fd)
                return True
            warn, self._warned = not self._warned, True
        if warn:
            log.warning("more than %d events on the agent's own locked files; closing them "
                        "may drop the journal's locks", MAX_PARKED)
        return False

    def release(self) -> None:
        """Close the parked descriptors (at shutdown, after the stores were closed)."""
        with self._lock:
            parked, self._parked = self._parked, []
        for fd in parked:
            with contextlib.suppress(OSError):
                os.close(fd)
