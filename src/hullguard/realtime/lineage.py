"""Is this process one of ours? The agent never scans its own accesses, nor its descendants'.

The real-time scan workers register their pids with the monitor, but the agent starts other
processes too: the forkserver and worker processes of scheduled scans (grandchildren, started
by :mod:`multiprocessing`), helpers a service runs. Registering each of them would tie every
service to the monitor, so instead an event's process is checked for descending from the
agent by following the parent chain in ``/proc/<pid>/stat``.

Cost on the reader thread: one small ``/proc`` read for a process seen before (the answer is
cached by ``(pid, start time)``, so a reused pid never inherits an old answer), and one read
per ancestor for a new process (typically 3 to 6). It only runs for events that missed the
verdict cache. A parent always started before its child; an ancestor whose start time is
later than its child's is a reused pid and ends the walk (not ours).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

_MAX_DEPTH = 64


def stat_of(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time in clock ticks)`` of ``pid``; None when it has exited."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read(4096)
        fields = data[data.rindex(b")") + 2:].split()
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


class Lineage:
    """Answers "does ``pid`` descend from ``root``?" with a bounded cache."""

    def __init__(self, root: int, *, capacity: int = 8192) -> None:
        self.root = root
        self.capacity = capacity
        self._cache: OrderedDict[tuple[int, int], bool] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0
        """/proc reads done so far (for tests and the benchmark)."""

    def descends(self, pid: int) -> bool:
        if pid == self.root:
            return True
        st = stat_of(pid)
        self.reads += 1
        if st is None:
            return False
        key = (pid, st[1])
        with self._lock:
            known = self._cache.get(key)
        if known is not None:
            return known
        seen = [key]
        result = False
        ppid, start = st
        for _ in range(_MAX_DEPTH):
            if ppid == self.root:
                result = True
                break
            if ppid <= 1:
                break
            pst = stat_of(ppid)
            self.reads += 1
            if pst is None or pst[1] > start:  # exited, or the pid was reused by a younger process
                break
            pkey = (ppid, pst[1])
            with self._lock:
                known = self._cache.get(pkey)
            if known is not None:
                result = known
                break
            seen.append(pkey)
            ppid, start = pst
        with self._lock:
            for k in seen:
                self._cache[k] = result
                self._cache.move_to_end(k)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return result
