"""The current engine, swapped atomically on reload.

Readers take ``holder.engine`` once per object and keep using that instance, so a scan in
progress finishes with the rules it started with; the lock only serialises reloads.
"""

from __future__ import annotations

import threading

from hullguard.engine.engine import Engine


class EngineHolder:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.generation = 0
        """Incremented on every reload (cheap change detection for verdict caches)."""

    @property
    def engine(self) -> Engine:
        return self._engine  # one attribute read: atomic under the GIL

    def reload(self, new: Engine) -> Engine:
        """Install ``new``; returns the previous engine."""
        with self._lock:
            old, self._engine = self._engine, new
            self.generation += 1
            return old
