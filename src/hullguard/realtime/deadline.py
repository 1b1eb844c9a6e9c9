"""Exactly-once answers with a deadline: the guarantee that no process waits on us for long.

Each permission event becomes a :class:`Pending`. Whoever is first — the worker with a verdict
or the :class:`Watchdog` when the deadline passes — answers it; every later attempt is a no-op.
The watchdog is a thread that does nothing but wait for the next deadline, so a hung or slow
scan can never keep a process blocked past it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

Answer = Callable[[bool], None]
"""Write the answer to the kernel: ``True`` allows, ``False`` denies."""


class Pending:
    """One permission event waiting for its answer."""

    __slots__ = ("_answer", "_lock", "answered_at", "created", "deadline", "on_timeout", "timed_out")

    def __init__(self, answer: Answer, deadline: float,
                 on_timeout: Callable[[Pending], None] | None = None) -> None:
        self._answer = answer
        self._lock = threading.Lock()
        self.created = time.monotonic()
        self.deadline = deadline
        self.answered_at: float | None = None
        self.timed_out = False
        self.on_timeout = on_timeout

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    def answer(self, allow: bool) -> bool:
        """Answer now unless someone already did; True when this call answered."""
        with self._lock:
            if self.answered_at is not None:
                return False
            self.answered_at = time.monotonic()
        self._answer(allow)
        return True

    def expire(self, default_allow: bool) -> bool:
        """The deadline passed: answer the default; True when the answer came from here."""
        with self._lock:
            if self.answered_at is not None:
                return False
            self.answered_at = time.monotonic()
            self.timed_out = True
        self._answer(default_allow)
        if self.on_timeout is not None:
            self.on_timeout(self)
        return True


class Watchdog:
    """Answers every :class:`Pending` whose deadline passed with the default answer."""

    def __init__(self, default_allow: bool = True, on_error: Callable[[BaseException], None] | None = None
                 ) -> None:
        self.default_allow = default_allow
        self._heap: list[tuple[float, int, Pending]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name="hullguard-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, pending: Pending) -> None:
        with self._cond:
            heapq.heappush(self._heap, (pending.deadline, next(self._seq), pending))
            if self._heap[0][2] is pending:
                self._cond.notify()

    def expire_all(self) -> None:
        """Answer everything still waiting (used when shutting down)."""
        with self._cond:
            items, self._heap = self._heap, []
        for _, _, pending in items:
            self._expire(pending)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.expire_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def _expire(self, pending: Pending) -> None:
        try:
            pending.expire(self.default_allow)
        except Exception as exc:  # the kernel refused the answer: nothing more we can do
            if self._on_error is not None:
                self._on_error(exc)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                # drop entries already answered so the heap does not grow with finished work
                while self._heap and self._heap[0][2].answered:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, pending = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            self._expire(pending)
