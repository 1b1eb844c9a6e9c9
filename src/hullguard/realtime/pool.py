"""Scan pools: where the monitor sends files to be scanned.

:class:`ProcessScanPool` is the real one (see :mod:`hullguard.realtime.worker` for why
processes). Each worker is driven by one thread here that sends a job, waits for its answer
and, when a worker takes longer than the hard limit, kills it, reports the job as
``not scanned: timeout`` and starts a fresh worker. :class:`ThreadScanPool` runs a plain
function in threads, for scanners that release the GIL and for tests of the monitor.

Both are bounded: :meth:`submit` returns False instead of queueing without limit, and the
monitor answers such an event at once (overload is a timeout that happens early).
"""

from __future__ import annotations

import contextlib
import pickle
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hullguard.engine.verdict import NotScannedReason, ScanOutcome, Verdict

Done = Callable[["ScanJob", ScanOutcome], None]


@dataclass
class ScanJob:
    fd: int
    """The file to scan; owned by the submitter, who closes it after ``done`` ran."""
    size: int
    done: Done
    submitted: float = field(default_factory=time.monotonic)


class ScanPool(Protocol):
    db_version: str

    def submit(self, job: ScanJob) -> bool: ...
    def pids(self) -> frozenset[int]: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def busy(self) -> int: ...


class PoolError(RuntimeError):
    """The workers could not be started (for example the signatures did not load)."""


def timeout_outcome(detail: str) -> ScanOutcome:
    return ScanOutcome((Verdict.not_scanned(NotScannedReason.TIMEOUT, detail),))


def _deliver(job: ScanJob, outcome: ScanOutcome, on_error: Callable[[BaseException], None]) -> None:
    try:
        job.done(job, outcome)
    except Exception as exc:
        on_error(exc)


class ThreadScanPool:
    """Runs ``scan(fd, size)`` in threads; bounded queue."""

    def __init__(self, scan: Callable[[int, int], ScanOutcome], *, workers: int = 2, max_queue: int = 256,
                 db_version: str = "threads", on_error: Callable[[BaseException], None] = lambda e: None
                 ) -> None:
        self._scan = scan
        self._queue: queue.Queue[ScanJob | None] = queue.Queue(maxsize=max_queue)
        self._threads = [threading.Thread(target=self._run, name=f"hullguard-scan-{i}", daemon=True)
                         for i in range(max(1, workers))]
        self._busy = 0
        self._lock = threading.Lock()
        self.db_version = db_version
        self._on_error = on_error

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, job: ScanJob) -> bool:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def pids(self) -> frozenset[int]:
        return frozenset()

    def busy(self) -> int:
        return self._busy + self._queue.qsize()

    def stop(self) -> None:
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._busy += 1
            try:
                try:
                    outcome = self._scan(job.fd, job.size)
                except Exception as exc:
                    outcome = ScanOutcome((Verdict.not_scanned(NotScannedReason.ERROR, str(exc)),))
                _deliver(job, outcome, self._on_error)
            finally:
                with self._lock:
                    self._busy -= 1


class _Worker:
    """One worker process and the socket to it."""

    def __init__(self, engine_config: Any, start_timeout: float) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hullguard.realtime.worker", str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            child.close()
        self.sock = parent
        try:
            parent.settimeout(start_timeout)
            parent.send(pickle.dumps(engine_config))
            reply = pickle.loads(parent.recv(1 << 20) or pickle.dumps(("error", "worker exited")))
        except (OSError, pickle.PickleError, EOFError) as exc:
            self.kill()
            raise PoolError(f"scan worker did not start: {exc}") from exc
        if reply[0] != "ready":
            self.kill()
            raise PoolError(f"scan worker did not start: {reply[1]}")
        self.db_version: str = reply[1]
        self.engine_version: str = reply[2]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def scan(self, job_id: int, fd: int, size: int, timeout: float) -> ScanOutcome:
        self.sock.settimeout(timeout)
        socket.send_fds(self.sock, [pickle.dumps((job_id, size))], [fd])
        while True:
            data = self.sock.recv(1 << 24)
            if not data:
                raise ConnectionError("scan worker exited")
            got_id, outcome = pickle.loads(data)
            if got_id == job_id:
                if not isinstance(outcome, ScanOutcome):
                    raise ConnectionError("scan worker sent a bad reply")
                return outcome

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.sock.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()  # the worker sees EOF and exits
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.kill()


class ProcessScanPool:
    """Worker processes, each driven by one thread of this process."""

    def __init__(self, engine_config: Any, *, workers: int = 2, max_queue: int = 1024,
                 hard_timeout: float = 60.0, start_timeout: float = 120.0,
                 on_error: Callable[[BaseException], None] = lambda e: None,
                 on_restart: Callable[[int, str], None] = lambda pid, why: None) -> None:
        self._engine_config = engine_config
        self._count = max(1, workers)
        self._queue: queue.Queue[ScanJob | None] = queue.Queue(maxsize=max(1, max_queue))
        self._hard_timeout = hard_timeout
        self._start_timeout = start_timeout
        self._on_error = on_error
        self._on_restart = on_restart
        self._workers: list[_Worker | None] = []
        self._active: list[_Worker | None] = []
        """The worker each thread is using right now (a reload retires it after the job)."""
        self._pids: frozenset[int] = frozenset()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._lock = threading.Lock()
        self._ids = iter(range(1, 1 << 62))
        self._stopping = False
        self.db_version = ""
        self.engine_version = ""

    def start(self) -> None:
        for _ in range(self._count):
            self._workers.append(_Worker(self._engine_config, self._start_timeout))
        self._active = [None] * self._count
        first = self._workers[0]
        assert first is not None
        self.db_version, self.engine_version = first.db_version, first.engine_version
        self._update_pids()
        for i in range(self._count):
            t = threading.Thread(target=self._run, args=(i,), name=f"hullguard-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _update_pids(self) -> None:
        with self._lock:
            self._pids = frozenset(w.pid for w in (*self._workers, *self._active) if w is not None)

    def reload(self, engine_config: Any = None) -> None:
        """Load the signatures anew: start a fresh set of workers, then retire the old ones.

        The old workers keep scanning until the new ones are ready, and a job in progress
        finishes on the worker that has it. Raises :class:`PoolError` when a new worker cannot
        start (a bad signature file): then nothing changes and the old engine stays in use.
        """
        config = self._engine_config if engine_config is None else engine_config
        fresh: list[_Worker] = []
        try:
            for _ in range(self._count):
                fresh.append(_Worker(config, self._start_timeout))
        except PoolError:
            for w in fresh:
                w.kill()
            raise
        replacement: list[_Worker | None] = [*fresh]
        with self._lock:
            old, self._workers = self._workers, replacement
            self._engine_config = config
            self.db_version, self.engine_version = fresh[0].db_version, fresh[0].engine_version
            idle = [w for w in old if w is not None and w not in self._active]
        self._update_pids()
        for w in idle:
            w.stop()

    def pids(self) -> frozenset[int]:
        return self._pids

    def busy(self) -> int:
        return self._busy + self._queue.qsize()

    def submit(self, job: ScanJob) -> bool:
        if self._stopping:
            return False
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _respawn(self, index: int, why: str) -> None:
        old = self._workers[index]
        if old is not None:
            old.kill()
            self._on_restart(old.pid, why)
        self._workers[index] = None
        self._update_pids()
        while not self._stopping:
            try:
                self._workers[index] = _Worker(self._engine_config, self._start_timeout)
                break
            except PoolError as exc:
                self._on_error(exc)
                time.sleep(1)
        self._update_pids()

    def _run(self, index: int) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._busy += 1
            try:
                with self._lock:
                    worker = self._workers[index]
                    self._active[index] = worker
                if worker is None:
                    _deliver(job, timeout_outcome("no scan worker"), self._on_error)
                    continue
                failed = ""
                try:
                    outcome = worker.scan(next(self._ids), job.fd, job.size, self._hard_timeout)
                except TimeoutError:
                    outcome = timeout_outcome(f"scan took longer than {self._hard_timeout:g} s")
                    failed = "scan timeout"
                except (OSError, pickle.PickleError, EOFError) as exc:
                    outcome = ScanOutcome(
                        (Verdict.not_scanned(NotScannedReason.ERROR, f"scan worker: {exc}"),))
                    failed = str(exc)
                with self._lock:
                    self._active[index] = None
                    current = self._workers[index] is worker
                _deliver(job, outcome, self._on_error)
                if not current:  # replaced by a reload while it scanned: retire it now
                    worker.stop()
                    self._update_pids()
                elif failed and not self._stopping:
                    self._respawn(index, failed)
            finally:
                with self._lock:
                    self._busy -= 1

    def stop(self) -> None:
        self._stopping = True
        # jobs still queued are answered by the monitor's watchdog; tell every thread to finish
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _deliver(job, timeout_outcome("agent stopping"), self._on_error)
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        for w in self._workers:
            if w is not None:
                w.stop()
        for t in self._threads:
            t.join(timeout=5)
        self._workers = []
        self._update_pids()
