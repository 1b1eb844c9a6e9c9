"""The agent's journal writer: one thread that builds and stores records, off the answering path.

Doors hand over a function that builds the record (naming the user and the container may
read files or ask Docker), so nothing slow runs where a process waits for an answer. Records
queued in the same moment are written in one transaction. The queue is bounded: when the disk
cannot keep up, records are dropped and counted rather than letting memory grow.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from hullguard.journal.record import DetectionRecord
from hullguard.journal.store import JournalStore

log = logging.getLogger("hullguard.agent.journal")

RecordFactory = Callable[[], DetectionRecord | None]


class JournalWriter:
    def __init__(self, store: JournalStore, *, max_queue: int = 100_000,
                 on_record: Callable[[DetectionRecord], None] | None = None) -> None:
        self.store = store
        self._queue: queue.Queue[RecordFactory | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="hullguard-journal", daemon=True)
        self._on_record = on_record
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, factory: RecordFactory) -> None:
        try:
            self._queue.put_nowait(factory)
        except queue.Full:
            self.dropped += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _build(self, factory: RecordFactory) -> DetectionRecord | None:
        try:
            return factory()
        except Exception:
            log.exception("building a journal record failed")
            return None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            records = [r for f in batch if f is not None and (r := self._build(f)) is not None]
            if records:
                try:
                    self.store.add_many(records)
                    self.written += len(records)
                except Exception:
                    log.exception("writing %d journal records failed", len(records))
                for r in records:
                    if self._on_record is not None:
                        self._on_record(r)
            if stop:
                return
