"""The real-time monitor: read fanotify events, answer them in time, act on detections.

The answering path is short on purpose. The reader thread, per event:

1. answers at once for the agent's own process and its scan workers (we never scan ourselves),
   for non-regular files, for cache hits (clean) and for excluded accesses;
2. otherwise registers the event with the :class:`~hullguard.realtime.deadline.Watchdog` and
   hands the file to the scan pool (a second event on a file already being scanned waits for
   that scan instead of starting another);
3. when the pool is full, answers the default at once (overload is an early timeout).

The reader thread never opens a file itself: an open on a marked filesystem would wait for
an answer only the reader can give. Whatever may open one (user names for exclusions, the
behaviour exec gate) runs on the context lane, a second thread, with the deadline running.

A worker thread gets the verdict, answers (deny when the policy says so), then — only after
the answer — caches clean verdicts (kernel ignore mark + user-space LRU), cleans host files,
and queues the journal record. Records are built in the journal writer's thread, since
naming the user and the container costs file reads and Docker calls.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hullguard.engine.verdict import NotScannedReason, ScanOutcome, Verdict
from hullguard.journal.record import DetectionRecord, Level, Module, RecordKind, utcnow
from hullguard.objects.hostfs import RootedFile
from hullguard.objects.scanobject import ContainerRef, ObjectContext, ScanEvent, ScanObject, Scope
from hullguard.objects.uri import ObjectURI
from hullguard.realtime.background import Background
from hullguard.realtime.cache import FileKey, LRUCache
from hullguard.realtime.context import EventContext, RecentProcesses, UserNames, fd_path, resolve
from hullguard.realtime.deadline import Pending, Watchdog
from hullguard.realtime.exclusions import Exclusions
from hullguard.realtime.fanotify import (
    FAN_CLOSE_WRITE,
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    EventMetadata,
    Fanotify,
)
from hullguard.realtime.lineage import Lineage
from hullguard.realtime.lockedfiles import LockedFiles
from hullguard.realtime.marks import MarkManager, MarkTarget
from hullguard.realtime.pool import ScanJob, ScanPool
from hullguard.response.actions import Action
from hullguard.response.clean import delete_in_root
from hullguard.response.policy import PolicyConfig, RemediationLevel, Remedy, decide
from hullguard.response.quarantine import QuarantineStore, make_handler
from hullguard.runtime.docker import ContainerInfo

log = logging.getLogger("hullguard.realtime")

RecordFactory = Callable[[], DetectionRecord | None]
Sink = Callable[[RecordFactory], None]
"""Takes a function that builds a record; called off the answering path (journal writer thread)."""

# outcomes that stay true until the file changes, so they are cached like clean verdicts
_STABLE_REASONS = {NotScannedReason.TOO_LARGE, NotScannedReason.ENCRYPTED, NotScannedReason.DEPTH_LIMIT,
                   NotScannedReason.FILE_COUNT_LIMIT, NotScannedReason.TOTAL_SIZE_LIMIT,
                   NotScannedReason.RATIO_LIMIT, NotScannedReason.CORRUPT}


class ContainerLookup(Protocol):
    """What the monitor asks about containers; :class:`~hullguard.runtime.docker.DockerMetadata` fits."""

    def cached(self, container_id: str) -> ContainerInfo | None: ...
    def get(self, container_id: str) -> ContainerInfo | None: ...
    def by_merged_dir(self, merged_dir: str) -> ContainerInfo | None: ...


class NoContainers:
    """No container runtime: container files are named by id only."""

    def cached(self, container_id: str) -> ContainerInfo | None:
        return None

    def get(self, container_id: str) -> ContainerInfo | None:
        return None

    def by_merged_dir(self, merged_dir: str) -> ContainerInfo | None:
        return None


@dataclass
class MonitorSettings:
    open_perm: bool = True
    deadline: float = 2.0
    fail_closed: bool = False
    cache_size: int = 65536
    kernel_cache: bool = True
    audit: bool = False
    exclusions: Exclusions = field(default_factory=Exclusions)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    @property
    def mask(self) -> int:
        return FAN_OPEN_EXEC_PERM | FAN_CLOSE_WRITE | (FAN_OPEN_PERM if self.open_perm else 0)

    @property
    def permission_mask(self) -> int:
        return FAN_OPEN_EXEC_PERM | (FAN_OPEN_PERM if self.open_perm else 0)


@dataclass
class Stats:
    events: int = 0
    own: int = 0
    cache_hits: int = 0
    scans: int = 0
    timeouts: int = 0
    overloads: int = 0
    detections: int = 0
    denied: int = 0
    errors: int = 0
    overflows: int = 0
    """fanotify queue overflows (FAN_Q_OVERFLOW): events the kernel dropped."""


class _Waiter:
    """One access waiting for a verdict, and its context, read only when something is recorded.

    Reading who did it (``resolve``: three /proc reads) cost more than scanning a small file.
    A clean answer to a permission event on a non-empty file needs none of it when there are
    no exclusions, and the process cannot go away before it is answered, so the context is read
    when the verdict asks for a record (:meth:`Monitor._conclude` reads it before answering)
    and never otherwise.
    """

    __slots__ = ("_ctx", "_resolve", "event", "meta", "pending")

    def __init__(self, meta: EventMetadata, ctx: EventContext | None, event: ScanEvent,
                 pending: Pending | None, resolve_ctx: Callable[[], EventContext] | None = None) -> None:
        if ctx is None and resolve_ctx is None:
            raise ValueError("a waiter needs its context or a way to read it")
        self.meta = meta
        self._ctx = ctx
        self._resolve = resolve_ctx
        self.event = event
        self.pending = pending

    @property
    def ctx(self) -> EventContext:
        if self._ctx is None:
            assert self._resolve is not None
            self._ctx = self._resolve()
        return self._ctx


@dataclass
class _Scan:
    key: FileKey
    fd: int
    waiters: list[_Waiter]
    fds: list[int]


def event_of(mask: int) -> ScanEvent:
    if mask & FAN_OPEN_EXEC_PERM:
        return ScanEvent.EXECUTED
    if mask & FAN_OPEN_PERM:
        return ScanEvent.OPENED
    return ScanEvent.CREATED


class Monitor:
    """Owns the fanotify group's event loop; marks are managed through :attr:`marks`."""

    def __init__(self, fan: Fanotify, pool: ScanPool, sink: Sink, settings: MonitorSettings,
                 containers: ContainerLookup | None = None, quarantine: QuarantineStore | None = None
                 ) -> None:
        self.fan = fan
        self.pool = pool
        self.sink = sink
        self.settings = settings
        self.containers: ContainerLookup = containers or NoContainers()
        self.marks = MarkManager(fan, settings.mask)
        # files the agent holds POSIX locks on (its journal): never an event fd closed for them
        self.locked = LockedFiles(fan, settings.mask)
        self.cache: LRUCache[ScanOutcome] = LRUCache(settings.cache_size)
        self.stats = Stats()
        # Behaviour monitoring's exec gate (behavior.gate.ExecGate.should_deny), set by the agent:
        # asked on FAN_OPEN_EXEC_PERM before any cache; a non-None answer denies the execution.
        self.exec_gate: Callable[[int, bytes, str], object] | None = None
        # whether the gate's rules can match a host execution (ExecGate.needs_host); when they
        # cannot, host executions are answered from the cache and skipped by ignore marks
        self.exec_gate_host: Callable[[], bool] | None = None
        self._gate_host_seen = False
        self.users = UserNames()
        self.processes = RecentProcesses()
        self.watchdog = Watchdog(default_allow=not settings.fail_closed, on_error=self._error)
        self._own_pid = os.getpid()
        self.lineage = Lineage(self._own_pid)
        self.background = Background()
        self.lane = Background(max_queue=1024, name="hullguard-context")
        self._quarantine = make_handler(quarantine) if quarantine is not None else None
        self._lock = threading.Lock()
        self._inflight: dict[FileKey, _Scan] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hullguard-fanotify", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.watchdog.start()
        self.background.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop reading; everything still waiting gets the default answer; the caller closes the fd."""
        # quarantines still queued open files on marked filesystems: finish them while the
        # reader still answers the agent's own accesses
        self.background.stop()
        self.lane.stop(timeout=5)
        self._stop.set()
        self._thread.join(timeout=5)
        self.watchdog.stop()

    # --- the answering path -----------------------------------------------------------------
    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fan.fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            try:
                events = self.fan.read()
            except OSError as exc:
                self._error(exc)
                time.sleep(0.05)
                continue
            for ev in events:
                self.stats.events += 1
                try:
                    self.handle(ev)
                except Exception as exc:  # never leave an event unanswered
                    self._error(exc)
                    self._finish_unhandled(ev)

    def _finish_unhandled(self, ev: EventMetadata) -> None:
        if ev.fd < 0:
            return
        with contextlib.suppress(OSError):
            if ev.is_permission:
                self.fan.respond(ev.fd, True)
        with contextlib.suppress(OSError):
            self.locked.close(ev.fd)

    def _answer_close(self, ev: EventMetadata, allow: bool = True, pending: Pending | None = None,
                      st: os.stat_result | None = None) -> None:
        """``st``: the event file's, when known (saves :meth:`LockedFiles.close` an fstat)."""
        try:
            if ev.is_permission:
                if pending is not None:  # the watchdog may have answered already: exactly once
                    pending.answer(allow)
                else:
                    self.fan.respond(ev.fd, allow, audit=self.settings.audit and not allow)
        finally:
            self.locked.close(ev.fd, (st.st_dev, st.st_ino) if st is not None else None)

    def _is_own(self, pid: int) -> bool:
        return pid == self._own_pid or pid in self.pool.pids()

    def handle(self, ev: EventMetadata) -> None:
        """Called on the reader thread: nothing here may open a file (see :meth:`_to_lane`)."""
        if ev.overflow or ev.fd < 0:
            self.stats.overflows += 1
            log.warning("fanotify queue overflow: events were lost")
            return
        if self._is_own(ev.pid):
            self.stats.own += 1
            self._answer_close(ev)
            return
        st = os.fstat(ev.fd)
        if not stat.S_ISREG(st.st_mode):
            self._answer_close(ev, st=st)
            return
        if ev.mask & FAN_OPEN_EXEC_PERM and self._gate_sees(self.marks.target(st.st_dev)):
            ctx = resolve(ev.pid, st, fd_path(ev.fd), self.marks.target(st.st_dev), self.processes)
            self._to_lane(ev, st, ctx, gate=True)
            return
        self._decide(ev, st, None, None, in_lane=False)

    def _to_lane(self, ev: EventMetadata, st: os.stat_result, ctx: EventContext, *, gate: bool) -> None:
        """Finish an event on the context lane, a thread of its own, with the deadline running.

        The reader thread must never open a file on a marked filesystem: the kernel would hold
        that open until the reader answered it, and the reader is the one waiting. Naming a user
        reads ``/etc/passwd`` (the host's, or the container's, which lies on the container's
        marked overlay), and the behaviour exec gate may read files and ask Docker; both run
        here instead. The lane's own opens are events of this process, answered at once by the
        reader like every other access of the agent.
        """
        waiter = _Waiter(ev, ctx, event_of(ev.mask), None)
        pending: Pending | None = None
        if ev.is_permission:
            pending = Pending(self._responder(ev.fd), time.monotonic() + self.settings.deadline,
                              on_timeout=functools.partial(self._timed_out, waiter))
            waiter.pending = pending
            self.watchdog.watch(pending)
        self.lane.start()
        if self.lane.submit(functools.partial(self._in_lane, ev, st, ctx, pending, gate)):
            return
        self.stats.overloads += 1
        try:
            if pending is not None:
                pending.answer(not self.settings.fail_closed)
            self._report_not_scanned(waiter, Verdict.not_scanned(NotScannedReason.TIMEOUT, "overload"))
        finally:
            self.locked.close(ev.fd, (st.st_dev, st.st_ino))

    def _in_lane(self, ev: EventMetadata, st: os.stat_result, ctx: EventContext, pending: Pending | None,
                 gate: bool) -> None:
        try:
            if gate and self._gate_denies(ev, ctx, pending):
                return
            self._decide(ev, st, ctx, pending, in_lane=True)
        except Exception as exc:  # never leave an event unanswered
            self._error(exc)
            with contextlib.suppress(OSError):
                self._answer_close(ev, True, pending, st)

    def _decide(self, ev: EventMetadata, st: os.stat_result, ctx: EventContext | None,
                pending: Pending | None, *, in_lane: bool) -> None:
        key = FileKey.of(st, self.pool.db_version)
        cached = self.cache.get(key)
        if cached is not None and not cached.detections:
            self.stats.cache_hits += 1
            self._answer_close(ev, pending=pending, st=st)
            return
        # a worker being started (before its pid is known), a scheduled scan's forkserver
        # workers, any helper process the agent runs
        if self.lineage.descends(ev.pid):
            self.stats.own += 1
            self._answer_close(ev, pending=pending, st=st)
            return
        if ctx is None and (not self.settings.exclusions.empty or not ev.is_permission or st.st_size == 0):
            # exclusions need it now; a notification's process may be gone by the verdict; an
            # empty file is usually being written, and a short-lived writer is gone by the time
            # its close-write is read: resolving now remembers it (RecentProcesses) for that record
            ctx = resolve(ev.pid, st, fd_path(ev.fd), self.marks.target(st.st_dev), self.processes)
        if ctx is not None:
            if self._excluded(ctx, names=in_lane):
                self._answer_close(ev, pending=pending, st=st)
                return
            if not in_lane and self.settings.exclusions.users:
                self._to_lane(ev, st, ctx, gate=False)  # user names are read off the reader thread
                return
        waiter = _Waiter(ev, ctx, event_of(ev.mask), pending, functools.partial(self._resolve_late, ev, st))
        if ev.is_permission and pending is None:
            waiter.pending = Pending(self._responder(ev.fd), time.monotonic() + self.settings.deadline,
                                     on_timeout=functools.partial(self._timed_out, waiter))
        if cached is not None:  # a detection we know: act on it again without rescanning
            self._conclude(_Scan(key, ev.fd, [waiter], [ev.fd]), cached, scanned=False)
            return
        if waiter.pending is not None and pending is None:
            self.watchdog.watch(waiter.pending)
        with self._lock:
            scan = self._inflight.get(key)
            if scan is not None:
                scan.waiters.append(waiter)
                scan.fds.append(ev.fd)
                return
            scan = _Scan(key, ev.fd, [waiter], [ev.fd])
            self._inflight[key] = scan
        self.stats.scans += 1
        job = ScanJob(ev.fd, st.st_size, functools.partial(self._scanned, scan))
        if not self.pool.submit(job):
            self.stats.overloads += 1
            overload = Verdict.not_scanned(NotScannedReason.TIMEOUT, "overload")
            self._scanned(scan, None, ScanOutcome((overload,)))

    def _gate_denies(self, ev: EventMetadata, ctx: EventContext, pending: Pending | None) -> bool:
        """Behaviour rules with the ``deny`` response (behavior.gate); any failure allows."""
        if self.exec_gate is None or self.lineage.descends(ev.pid):
            return False
        try:
            if self.exec_gate(ev.pid, ctx.path, ctx.container_id) is None:
                return False
        except Exception as exc:
            self._error(exc)
            return False
        self.stats.denied += 1
        self._answer_close(ev, allow=False, pending=pending, st=ctx.st)
        return True

    def _gate_sees(self, target: MarkTarget | None) -> bool:
        """Whether executions on ``target`` go through the behaviour exec gate.

        Container filesystems always do; the host's only while a gate rule can match a host
        execution. When that changes to yes (a rule reload), the kernel's ignore marks, which
        may hide host executions, are dropped so the gate sees every one from then on.
        """
        if self.exec_gate is None:
            return False
        if target is not None and target.kind == "container":
            return True
        host = self.exec_gate_host() if self.exec_gate_host is not None else True
        if host and not self._gate_host_seen and self.exec_gate_host is not None:
            self.flush_cached_verdicts()
        self._gate_host_seen = host
        return host

    def _ignore_mask(self, target: MarkTarget | None) -> int:
        """Kernel ignore marks leave executions visible while the exec gate needs to see them."""
        mask = self.settings.permission_mask
        return mask & ~FAN_OPEN_EXEC_PERM if self._gate_sees(target) else mask

    def _responder(self, fd: int) -> Callable[[bool], None]:
        def answer(allow: bool) -> None:
            self.fan.respond(fd, allow, audit=self.settings.audit and not allow)
        return answer

    def _excluded(self, ctx: EventContext, *, names: bool) -> bool:
        """``names``: user names may be looked up (never on the reader thread, see _to_lane)."""
        ex = self.settings.exclusions
        if ex.empty:
            return False
        if ex.path(ctx.path) or ex.process(ctx.exe):
            return True
        if ex.users and names and ex.user(ctx.uid, lambda: ctx.user(self.users, self._container_root(ctx))):
            return True
        if ex.containers or ex.images:
            cid = ctx.container_id
            info = self.containers.cached(cid) if cid else None
            if info is not None and ex.container(info.name, info.image):
                return True
        return False

    # --- after the scan ---------------------------------------------------------------------
    def _scanned(self, scan: _Scan, _job: ScanJob | None, outcome: ScanOutcome) -> None:
        with self._lock:
            self._inflight.pop(scan.key, None)
        self._conclude(scan, outcome, scanned=True)

    def _resolve_late(self, ev: EventMetadata, st: os.stat_result) -> EventContext:
        return resolve(ev.pid, st, fd_path(ev.fd), self.marks.target(st.st_dev), self.processes)

    def _conclude(self, scan: _Scan, outcome: ScanOutcome, *, scanned: bool) -> None:
        try:
            detections = outcome.detections
            if detections or outcome.not_scanned:
                for w in scan.waiters:  # read who did it while they still wait for the answer
                    _ = w.ctx
            if detections:
                self._on_detection(scan, outcome, detections[0])
            else:
                timeout = any(v.reason is NotScannedReason.TIMEOUT for v in outcome.not_scanned)
                allow = not (timeout and self.settings.fail_closed)
                for w in scan.waiters:
                    if w.pending is not None:
                        if timeout:
                            w.pending.expire(allow)
                        else:
                            w.pending.answer(allow)
                    elif timeout:
                        self._report_not_scanned(w, outcome.not_scanned[0])
                if scanned and not timeout:
                    self._cache_result(scan, outcome)
                    for v in outcome.not_scanned:
                        self._report_not_scanned(scan.waiters[0], v)
        except Exception as exc:
            self._error(exc)
            for w in scan.waiters:
                if w.pending is not None:
                    with contextlib.suppress(Exception):
                        w.pending.answer(True)
        finally:
            for w in scan.waiters:  # never close an event fd that was not answered
                if w.pending is not None and not w.pending.answered:
                    with contextlib.suppress(Exception):
                        w.pending.answer(not self.settings.fail_closed)
            for fd in scan.fds:
                with contextlib.suppress(OSError):
                    self.locked.close(fd, (scan.key.dev, scan.key.ino))

    def _cache_result(self, scan: _Scan, outcome: ScanOutcome) -> None:
        if any(v.reason not in _STABLE_REASONS for v in outcome.not_scanned):
            return
        if self.settings.kernel_cache:
            mask = self._ignore_mask(self.marks.target(scan.key.dev))
            try:
                self.fan.ignore(scan.fd, mask)
                # the file changed while it was scanned: the verdict is for an older version;
                # the signatures were reloaded meanwhile (checked after placing the mark, so a
                # reload's flush either removes this mark or this check sees the new version)
                if (FileKey.of(os.fstat(scan.fd), scan.key.db_version) != scan.key
                        or self.pool.db_version != scan.key.db_version):
                    self.fan.unignore(scan.fd, mask)
                    return
            except OSError as exc:
                log.debug("ignore mark: %s", exc)
        self.cache.put(scan.key, outcome)

    def _on_detection(self, scan: _Scan, outcome: ScanOutcome, verdict: Verdict) -> None:
        self.stats.detections += 1
        first = scan.waiters[0]
        remedy = decide(first.ctx.scope, self.settings.policy)
        allow = remedy is Remedy.REPORT
        for w in scan.waiters:
            if w.pending is not None and w.pending.answer(allow) and not allow:
                self.stats.denied += 1
        # the detection stays a detection until the file changes: repeated attempts are denied fast
        self.cache.put(scan.key, outcome)
        if remedy is Remedy.QUARANTINE and self._quarantine is not None:
            waiters = list(scan.waiters)
            if self.background.submit(functools.partial(self._quarantine_file, waiters, verdict)):
                return
            self._report_all(waiters, verdict, remedy, Action.BLOCKED, "quarantine queue full")
            return
        self._report_all(scan.waiters, verdict, remedy, self._remedy(first, remedy))

    def _report_all(self, waiters: list[_Waiter], verdict: Verdict, remedy: Remedy, action: Action,
                    detail: str = "") -> None:
        for i, w in enumerate(waiters):
            if i == 0:
                self._report_detection(w, verdict, action, detail)
            else:
                self._report_detection(w, verdict, self._repeat_action(remedy, action))

    def _location(self, ctx: EventContext) -> RootedFile | None:
        """Where the host reaches the file: a root and the path below it, never a bare path."""
        rel = ctx.path.lstrip(b"/")
        if not rel or ctx.deleted:
            return None
        scope = ctx.scope
        if scope is Scope.HOST:
            root = b"/"
        elif scope is Scope.VOLUME:
            root = f"/proc/{ctx.pid}/root".encode()
        elif ctx.target is not None:
            root = os.fsencode(ctx.target.path)
        else:
            return None
        return RootedFile(root, rel, ctx.st.st_dev, ctx.st.st_ino)

    def _quarantine_file(self, waiters: list[_Waiter], verdict: Verdict) -> None:
        """In the background thread, after the access was denied: quarantine, then record."""
        first = waiters[0]
        ctx = first.ctx
        action, detail = Action.CLEAN_FAILED, ""
        try:
            if ctx.deleted:
                action, detail = Action.CLEANED_BY_DELETING, "deleted before it could be quarantined"
            elif self.settings.policy.level is RemediationLevel.SAFE and verdict.inner:
                action, detail = Action.RETAINED, "inside an archive: remediation level 'safe' keeps it"
            else:
                location = self._location(ctx)
                if location is None:
                    action, detail = Action.RETAINED, "not reachable on the host file system"
                else:
                    uri, info = self._object(first)
                    ref = ContainerRef(info.id, info.name, info.image) if info is not None else \
                        (ContainerRef(ctx.container_id) if ctx.container_id else None)
                    obj = ScanObject(uri, ctx.st.st_size, ObjectContext(
                        scope=ctx.scope, container=ref, image=info.image if info is not None else ""),
                        first.event)
                    assert self._quarantine is not None
                    result = self._quarantine(obj, verdict, location)
                    action, detail = result.action, result.detail
        except Exception as exc:
            self._error(exc)
            detail = f"quarantine failed: {exc}"
        self._report_all(waiters, verdict, Remedy.QUARANTINE, action, detail)

    @staticmethod
    def _repeat_action(remedy: Remedy, action: Action) -> Action:
        return Action.BLOCKED if remedy is not Remedy.REPORT and action.removed_threat else action

    def _remedy(self, w: _Waiter, remedy: Remedy) -> Action:
        ctx = w.ctx
        if remedy in (Remedy.RETAIN, Remedy.REPORT):
            return Action.RETAINED
        if remedy is not Remedy.CLEAN:
            # BLOCK; QUARANTINE when the monitor has no quarantine store: the access is denied
            # and the file stays, which loses nothing
            return Action.BLOCKED
        if ctx.deleted:
            return Action.CLEANED_BY_DELETING
        expect = (ctx.st.st_dev, ctx.st.st_ino)
        rel = ctx.path.lstrip(b"/")
        scope = ctx.scope
        if scope is Scope.HOST:
            return delete_in_root(b"/", rel, expect=expect)
        if scope is Scope.VOLUME:
            return delete_in_root(f"/proc/{ctx.pid}/root".encode(), rel, expect=expect)
        if ctx.target is not None:  # a container layer, cleaned only when configured so
            return delete_in_root(os.fsencode(ctx.target.path), rel, expect=expect)
        return Action.CLEAN_FAILED

    def _timed_out(self, w: _Waiter, _pending: Pending) -> None:
        self.stats.timeouts += 1
        _ = w.ctx  # now, not in the journal thread: the event fd is still open here
        self._report_not_scanned(w, Verdict.not_scanned(
            NotScannedReason.TIMEOUT, f"no verdict within {self.settings.deadline:g} s"))

    # --- records (built in the journal writer thread) ------------------------------------------
    def _container_root(self, ctx: EventContext) -> str:
        if ctx.in_container_fs and ctx.target is not None:
            return ctx.target.path
        cid = ctx.process_container
        info = self.containers.cached(cid) if cid else None
        return info.merged_dir if info is not None else ""

    def _container(self, ctx: EventContext) -> ContainerInfo | None:
        target = ctx.target
        if ctx.in_container_fs and target is not None and not target.container_id:
            info = self.containers.by_merged_dir(target.path)
            if info is not None:
                self.marks.set_container(target.dev, info.id)
                return info
        cid = ctx.container_id
        return self.containers.get(cid) if cid else None

    def _object(self, w: _Waiter) -> tuple[ObjectURI, ContainerInfo | None]:
        ctx = w.ctx
        info = self._container(ctx)
        path = ctx.path
        if ctx.scope is Scope.HOST or info is None:
            uri = ObjectURI.file(path) if ctx.scope is Scope.HOST or not ctx.container_id else \
                ObjectURI.docker("", ctx.container_id, path)
        else:
            uri = ObjectURI.docker(info.image, info.id, path)
        return uri, info

    def _base_record(self, w: _Waiter) -> dict[str, object]:
        ctx = w.ctx
        uri, info = self._object(w)
        root = info.merged_dir if info is not None and ctx.process_container else ""
        return {
            "module": Module.REALTIME.value,
            "object": uri.display(),
            "user": ctx.user(self.users, root),
            "process": ctx.exe,
            "event": w.event.value,
            "container_id": info.id if info is not None else ctx.container_id,
            "container_name": info.name if info is not None else "",
            "image": info.image if info is not None else "",
        }

    def _report_detection(self, w: _Waiter, verdict: Verdict, action: Action, detail: str = "") -> None:
        det = verdict.detection
        now = utcnow()

        def build() -> DetectionRecord:
            base = self._base_record(w)
            info = "; ".join(filter(None, (det.tags if det else "", detail)))
            return DetectionRecord(
                detection=det.name if det else "", type=det.type if det else "", action=action.value,
                level=Level.ERROR.value if not action.removed_threat else Level.WARNING.value,
                sha1=verdict.sha1, info=info, kind=RecordKind.DETECTION, time=now,
                **base)  # type: ignore[arg-type]
        self.sink(build)

    def _report_not_scanned(self, w: _Waiter, verdict: Verdict) -> None:
        reason = verdict.reason.value if verdict.reason else "error"
        now = utcnow()

        def build() -> DetectionRecord:
            base = self._base_record(w)
            info = f"not scanned: {reason}" + (f" ({verdict.detail})" if verdict.detail else "")
            return DetectionRecord(action=Action.NOT_SCANNED.value, level=Level.INFO.value, info=info,
                                   kind=RecordKind.NOT_SCANNED, time=now, **base)  # type: ignore[arg-type]
        self.sink(build)

    def flush_cached_verdicts(self) -> None:
        """Forget every cached verdict, kernel ignore marks included (new signatures were loaded).

        Call after the pool reports the new ``db_version``: user-space entries are keyed by it
        anyway; the kernel's ignore marks are not, and would keep files cleared by the old
        signatures from ever being scanned again.
        """
        self.cache.clear()
        if self.settings.kernel_cache:
            self.fan.flush_ignores()
            self.locked.remark()  # the flush dropped the locked files' permanent marks too

    def _error(self, exc: BaseException) -> None:
        self.stats.errors += 1
        log.warning("real-time monitor: %s: %s", type(exc).__name__, exc)


__all__ = ["ContainerLookup", "Monitor", "MonitorSettings", "NoContainers", "Stats", "event_of"]
