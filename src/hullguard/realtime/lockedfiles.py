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
import errno
import logging
import os
import threading
from collections.abc import Iterable

from hullguard.realtime.fanotify import (
    AT_FDCWD,
    FAN_MARK_ADD,
    FAN_MARK_DONT_FOLLOW,
    FAN_MARK_IGNORED_MASK,
    FAN_MARK_IGNORED_SURV_MODIFY,
    FAN_MARK_REMOVE,
    Fanotify,
    FanotifyError,
)

log = logging.getLogger("hullguard.realtime")

MAX_PARKED = 4096
"""Descriptors kept open at most; beyond that they are closed (and the loss logged)."""


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
        self._paths: dict[tuple[int, int], str] = {}
        self._parked: list[int] = []
        self.parked_total = 0
        self._warned = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._paths)

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
            self._mark(path)

    def remark(self) -> None:
        """Place every ignore mark again (after ``FAN_MARK_FLUSH`` dropped them)."""
        with self._lock:
            paths = list(self._paths.values())
        for path in paths:
            self._mark(path)

    def _mark(self, path: str) -> None:
        flags = FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_DONT_FOLLOW
        raw = os.fsencode(path)
        try:
            self._fan.mark(flags, self._mask, AT_FDCWD, raw)
        except FanotifyError as exc:
            if exc.errno != errno.EEXIST:
                log.warning("cannot exempt %s from real-time events: %s", path, exc)
                return
            # an evictable verdict-cache mark is on the inode already; a permanent mark cannot
            # join it, so drop it first (removing its whole mask removes the mark)
            with contextlib.suppress(FanotifyError):
                self._fan.mark(FAN_MARK_REMOVE | FAN_MARK_IGNORED_MASK | FAN_MARK_DONT_FOLLOW,
                               self._mask, AT_FDCWD, raw)
            try:
                self._fan.mark(flags, self._mask, AT_FDCWD, raw)
            except FanotifyError as again:
                log.warning("cannot exempt %s from real-time events: %s", path, again)

    def close(self, fd: int) -> None:
        """Close an event descriptor, unless it refers to a locked file (then it is parked)."""
        if self._paths:
            try:
                st = os.fstat(fd)
            except OSError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) in self._paths:
                with self._lock:
                    if len(self._parked) < MAX_PARKED:
                        self._parked.append(fd)
                        self.parked_total += 1
                        return
                    warn, self._warned = not self._warned, True
                if warn:
                    log.warning("more than %d events on the agent's own locked files; closing them "
                                "may drop the journal's locks", MAX_PARKED)
        os.close(fd)

    def release(self) -> None:
        """Close the parked descriptors (at shutdown, after the stores were closed)."""
        with self._lock:
            parked, self._parked = self._parked, []
        for fd in parked:
            with contextlib.suppress(OSError):
                os.close(fd)
