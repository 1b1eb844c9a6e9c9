"""One thread for slow responses that come after the answer (moving a file into the quarantine).

Quarantining encrypts and fsyncs a copy of the file, which can take a second for a large one.
Done in a scan pool's thread it would hold back every scan queued behind it, so it runs here,
one at a time, after the process that touched the file was already denied. The queue is
bounded: when it is full the caller records the detection without the quarantine.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("hullguard.realtime.background")

Task = Callable[[], None]


class Background:
    def __init__(self, *, max_queue: int = 1024, name: str = "hullguard-respond") -> None:
        self._queue: queue.Queue[Task | None] = queue.Queue(maxsize=max(1, max_queue))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, task: Task) -> bool:
        try:
            self._queue.put_nowait(task)
        except queue.Full:
            return False
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued (a quarantine half done would leave the file in place), then stop."""
        if not self._started:
            return
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            try:
                task()
            except Exception:
                log.exception("background response failed")
