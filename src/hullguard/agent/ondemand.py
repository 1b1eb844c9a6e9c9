"""On-demand scans: walk targets, scan on every core, apply the policy, record everything.

The shape is the design's one path, batched for speed: the main process walks the trees
(directory listings only, no per-file syscalls) and packs file names into chunks; worker
processes, each with its own engine built once, open every file themselves below a
directory fd (``O_NOFOLLOW``, checked to be a regular file, compared before and after) and
return only what matters: counts for clean files, verdicts for the rest. The main process
applies the policy (cleaning through the root again), writes the journal and reports
progress. Scheduled scans and container scans reuse :func:`run_scan` with other targets,
options and observers.

Worker processes come from a ``forkserver``: safe to start from a threaded agent, and the
server preloads this module so each worker only builds its engine.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import pwd
import signal
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from hullguard.engine.verdict import Detection, NotScannedReason, ScanOutcome, Verdict, VerdictKind
from hullguard.journal.record import DetectionRecord, Level, Module, RecordKind, ScanSession
from hullguard.objects.hostfs import (
    DirFiles,
    Excluder,
    RootedFile,
    SkipReason,
    WalkProblem,
    WalkStats,
    join,
    open_dir_at,
    open_dir_beneath,
    open_file_at,
    reason_for,
    walk_tree,
)
from hullguard.objects.scanobject import ScanEvent, ScanObject, Scope
from hullguard.objects.targets import Target
from hullguard.objects.uri import ObjectURI, escape_text
from hullguard.response.actions import Action
from hullguard.response.policy import PolicyConfig, decide
from hullguard.response.remediate import Remediation, remediate

if TYPE_CHECKING:
    from hullguard.agent.config import EngineConfig, ScanConfig
    from hullguard.journal.store import JournalStore

EXIT_CLEAN = 0
EXIT_CLEANED = 1
EXIT_NOT_SCANNED = 10
EXIT_THREATS = 50
EXIT_ERROR = 100
PROCESS_NAME = "hullguard"
MAX_POOL_RESTARTS = 3
SESSION_UPDATE_SECONDS = 2.0


class ScanError(RuntimeError):
    """The scan itself cannot run (engine cannot load, workers keep dying); one line for the user."""


class EngineUnavailable(RuntimeError):
    """Raised in a worker whose engine failed to build; carries the one-line reason."""


class FdScanner(Protocol):
    """The part of the engine a scan worker needs."""

    def scan_fd(self, fd: int, size: int | None = None) -> ScanOutcome: ...


EngineFactory = Callable[[], FdScanner]
"""Builds a worker's engine; must pickle (a module-level function or a small frozen dataclass)."""


@dataclass(frozen=True)
class EngineFromConfig:
    """The default factory: ``Engine.from_config(cfg)``, called once in each worker."""

    config: EngineConfig

    def __call__(self) -> FdScanner:
        from hullguard.engine.engine import Engine

        return Engine.from_config(self.config)


# --- options, results ------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanOptions:
    one_file_system: bool = False
    exclude: tuple[str, ...] = ()
    max_size: int = 0
    """Files larger than this are skipped (0: no limit besides the engine's)."""
    workers: int = 0
    """Worker processes; 0: one per usable core; 1: scan in this process."""
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig().on_demand(clean=False))
    module: str = Module.ON_DEMAND.value
    event: ScanEvent = ScanEvent.ON_DEMAND
    process: str = PROCESS_NAME
    user: str = ""
    """Recorded as the journal's User; empty: the invoking user's name."""
    chunk_files: int = 32
    """Files per batch sent to a worker: large enough to make IPC cheap, small enough to balance
    (on /usr/bin with 2 workers, 1 costs ~40% in IPC, 256 leaves one worker idle at the end)."""

    @staticmethod
    def from_config(cfg: ScanConfig, policy: PolicyConfig, **overrides: object) -> ScanOptions:
        base = ScanOptions(one_file_system=cfg.one_file_system, exclude=cfg.exclude,
                           max_size=cfg.max_size, workers=cfg.workers, policy=policy)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def worker_count(self) -> int:
        if self.workers > 0:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return os.cpu_count() or 1


@dataclass(frozen=True)
class Finding:
    """One journal record as it was produced, with what the display needs beyond it."""

    record: DetectionRecord
    verdict: Verdict
    remediation: Remediation | None = None


@dataclass(frozen=True)
class ScanProgress:
    files: int
    scanned_bytes: int
    detections: int
    not_scanned: int
    elapsed: float
    current: str
    """Display path of the most recently finished file (escaped)."""


class ScanObserver(Protocol):
    def progress(self, progress: ScanProgress) -> None: ...

    def finding(self, finding: Finding) -> None: ...


class NullObserver:
    def progress(self, progress: ScanProgress) -> None:
        del progress

    def finding(self, finding: Finding) -> None:
        del finding


@dataclass
class ScanReport:
    session: ScanSession
    findings: list[Finding] = field(default_factory=list)
    files: int = 0
    scanned_bytes: int = 0
    detections: int = 0
    cleaned: int = 0
    not_scanned: int = 0
    skipped: dict[SkipReason, int] = field(default_factory=dict)
    elapsed: float = 0.0
    workers: int = 0

    @property
    def records(self) -> list[DetectionRecord]:
        return [f.record for f in self.findings]

    @property
    def uncleaned(self) -> int:
        return self.detections - self.cleaned

    @property
    def exit_code(self) -> int:
        """Classic precedence: threats left 50 > something not scanned 10 > all threats removed 1 > 0.

        Skipped objects (special files, symlinks, excludes, ``--max-size``, other file systems)
        were left out on purpose and do not count as "not scanned".
        """
        if self.uncleaned > 0:
            return EXIT_THREATS
        if self.not_scanned > 0:
            return EXIT_NOT_SCANNED
        if self.detections > 0:
            return EXIT_CLEANED
        return EXIT_CLEAN


# --- worker side ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    target: int
    root: bytes
    root_ident: tuple[int, int]
    max_size: int
    dirs: tuple[DirFiles, ...]


@dataclass(frozen=True)
class FileFinding:
    relpath: bytes
    size: int
    dev: int
    ino: int
    verdicts: tuple[Verdict, ...]


@dataclass(frozen=True)
class ChunkResult:
    files: int
    scanned_bytes: int
    skipped: dict[SkipReason, int]
    findings: tuple[FileFinding, ...]
    last: bytes


_engine: FdScanner | None = None
_engine_error = "the scan engine was not loaded"


def load_worker_engine(factory: EngineFactory) -> None:
    """Build this process's engine once; a failure is kept and reported by every chunk."""
    global _engine, _engine_error
    try:
        _engine = factory()
    except Exception as exc:  # any load failure becomes one line for the user
        _engine, _engine_error = None, str(exc) or type(exc).__name__


def _pool_initializer(factory: EngineFactory) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    load_worker_engine(factory)


def scan_chunk(chunk: Chunk) -> ChunkResult:
    """Scan every file of a chunk; never raises for bad files (only when there is no engine)."""
    engine = _engine
    if engine is None:
        raise EngineUnavailable(_engine_error)
    files = nbytes = 0
    skipped: dict[SkipReason, int] = {}
    findings: list[FileFinding] = []
    last = b""

    def fail_all(d: DirFiles, reason: NotScannedReason, detail: str) -> None:
        for name in d.names:
            findings.append(FileFinding(join(d.reldir, name), 0, 0, 0,
                                        (Verdict.not_scanned(reason, detail),)))

    try:
        root_fd = open_dir_at(None, chunk.root)
    except OSError as exc:
        for d in chunk.dirs:
            fail_all(d, reason_for(exc), exc.strerror or "")
        return ChunkResult(0, 0, {}, tuple(findings), b"")
    try:
        rst = os.fstat(root_fd)
        if (rst.st_dev, rst.st_ino) != chunk.root_ident:
            for d in chunk.dirs:
                fail_all(d, NotScannedReason.CHANGED, "scan root was replaced")
            return ChunkResult(0, 0, {}, tuple(findings), b"")
        for d in chunk.dirs:
            try:
                dir_fd = open_dir_beneath(root_fd, d.reldir)
            except OSError as exc:
                fail_all(d, reason_for(exc), exc.strerror or "")
                continue
            try:
                dst = os.fstat(dir_fd)
                if (dst.st_dev, dst.st_ino) != (d.dev, d.ino):
                    fail_all(d, NotScannedReason.CHANGED, "directory was replaced during the scan")
                    continue
                for name in d.names:
                    rel = join(d.reldir, name)
                    last = rel
                    result = _scan_one(engine, dir_fd, name, rel, chunk.max_size)
                    if isinstance(result, SkipReason):
                        skipped[result] = skipped.get(result, 0) + 1
                        continue
                    finding, size = result
                    if size >= 0:
                        files += 1
                        nbytes += size
                    if finding is not None:
                        findings.append(finding)
            finally:
                os.close(dir_fd)
    finally:
        os.close(root_fd)
    return ChunkResult(files, nbytes, skipped, tuple(findings), last)


def _scan_one(engine: FdScanner, dir_fd: int, name: bytes, rel: bytes, max_size: int
              ) -> SkipReason | tuple[FileFinding | None, int]:
    """One file: (finding or None, bytes scanned or -1 when it was not scanned), or a skip."""
    try:
        fd = open_file_at(dir_fd, name)
    except OSError as exc:
        return FileFinding(rel, 0, 0, 0, (Verdict.not_scanned(reason_for(exc), exc.strerror or ""),)), -1
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):  # swapped for a FIFO or device since the walk
            return SkipReason.SPECIAL
        if max_size and before.st_size > max_size:
            return SkipReason.TOO_LARGE
        try:
            outcome = engine.scan_fd(fd, before.st_size)
        except OSError as exc:
            verdict = Verdict.not_scanned(reason_for(exc), exc.strerror or "")
            return FileFinding(rel, before.st_size, before.st_dev, before.st_ino, (verdict,)), -1
        except Exception as exc:  # an engine bug must cost one file, not the scan
            verdict = Verdict.not_scanned(NotScannedReason.ERROR, f"{type(exc).__name__}: {exc}")
            return FileFinding(rel, before.st_size, before.st_dev, before.st_ino, (verdict,)), -1
        verdicts = list(outcome.verdicts)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            verdicts.append(Verdict.not_scanned(NotScannedReason.CHANGED,
                                                "size or mtime changed while scanning"))
        finding = FileFinding(rel, before.st_size, before.st_dev, before.st_ino, tuple(verdicts)) \
            if verdicts else None
        return finding, before.st_size
    except OSError as exc:
        return FileFinding(rel, 0, 0, 0, (Verdict.not_scanned(reason_for(exc), exc.strerror or ""),)), -1
    finally:
        os.close(fd)


# --- main side -----------------------------------------------------------------------------
def invoking_user() -> str:
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _chunks(index: int, target: Target, options: ScanOptions, excluder: Excluder, stats: WalkStats
            ) -> Iterator[Chunk | WalkProblem]:
    """The walk of one target packed into chunks of about ``chunk_files`` files."""
    if target.unreachable is not None:
        yield target.unreachable
        return
    try:
        st = os.lstat(target.root)
    except OSError as exc:
        yield WalkProblem(b"", reason_for(exc), exc.strerror or "")
        return
    ident = (st.st_dev, st.st_ino)
    size = max(1, options.chunk_files)
    pending: list[DirFiles] = []
    count = 0

    def flush() -> Chunk:
        nonlocal pending, count
        chunk = Chunk(index, target.root, ident, options.max_size, tuple(pending))
        pending, count = [], 0
        return chunk

    for item in walk_tree(target.root, target.start, one_file_system=options.one_file_system,
                          excluder=excluder, path_prefix=target.prefix, stats=stats):
        if isinstance(item, WalkProblem):
            yield item
            continue
        names = item.names
        while names:
            take = names[: size - count]
            names = names[len(take):]
            pending.append(replace(item, names=take))
            count += len(take)
            if count >= size:
                yield flush()
    if pending:
        yield flush()


class _InProcess:
    """``workers == 1``: the same chunks, scanned here (no processes, easy to debug)."""

    def __init__(self, factory: EngineFactory) -> None:
        load_worker_engine(factory)

    def submit(self, chunk: Chunk) -> cf.Future[ChunkResult]:
        future: cf.Future[ChunkResult] = cf.Future()
        try:
            future.set_result(scan_chunk(chunk))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, *, now: bool = False) -> None:
        del now


class _Pool:
    def __init__(self, factory: EngineFactory, workers: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        self._executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                initializer=_pool_initializer, initargs=(factory,))

    def submit(self, chunk: Chunk) -> cf.Future[ChunkResult]:
        return self._executor.submit(scan_chunk, chunk)

    def shutdown(self, *, now: bool = False) -> None:
        """Stop the pool; ``now`` (Ctrl-C, errors) also kills workers busy with a large file."""
        if now:
            # ProcessPoolExecutor has no public way to stop running work; its process table is
            # the only handle on the workers (read defensively in case the attribute changes).
            processes = dict(getattr(self._executor, "_processes", None) or {})
            self._executor.shutdown(wait=False, cancel_futures=True)
            for proc in processes.values():
                with contextlib.suppress(Exception):
                    proc.terminate()
            for proc in processes.values():
                with contextlib.suppress(Exception):
                    proc.join(5)
            return
        self._executor.shutdown(wait=True, cancel_futures=True)


class _Run:
    """The state of one scan in the main process: counters, journal, policy, observer."""

    def __init__(self, targets: Sequence[Target], options: ScanOptions, journal: JournalStore | None,
                 observer: ScanObserver, report: ScanReport) -> None:
        self.targets = targets
        self.options = options
        self.journal = journal
        self.observer = observer
        self.report = report
        self.user = report.session.user
        self.started = time.monotonic()
        self.last_session_update = self.started

    # records -------------------------------------------------------------------------------
    def _record(self, target: Target, uri: ObjectURI, verdict: Verdict, action: Action,
                note: str = "") -> DetectionRecord:
        ctx = target.context
        base = DetectionRecord(
            module=self.options.module, object=uri.child(*verdict.inner).display(), action=action.value,
            user=self.user, process=self.options.process, event=self.options.event.value,
            container_id=ctx.container.id if ctx.container else "",
            container_name=ctx.container.name if ctx.container else "",
            image=ctx.image or (ctx.container.image if ctx.container else ""), layer=ctx.layer,
            session_id=self.report.session.id)
        if verdict.kind is VerdictKind.DETECTED:
            det = verdict.detection or Detection("unknown", "unknown")
            return replace(base, detection=det.name, type=det.type, level=Level.ERROR.value,
                           sha1=verdict.sha1, kind=RecordKind.DETECTION,
                           info="; ".join(filter(None, (
                               det.tags or Detection.make_tags(det.name, det.type, det.suspicion),
                               f"mount: {ctx.mount}" if ctx.mount else "", note))))
        reason = verdict.reason.value if verdict.reason else NotScannedReason.ERROR.value
        info = f"{reason}: {verdict.detail}" if verdict.detail else reason
        return replace(base, level=Level.WARNING.value, info=info, kind=RecordKind.NOT_SCANNED)

    def _emit(self, findings: list[Finding]) -> None:
        if not findings:
            return
        if self.journal is not None:
            self.journal.add_many(f.record for f in findings)
        for f in findings:
            self.report.findings.append(f)
            self.observer.finding(f)

    def problem(self, target: Target, problem: WalkProblem) -> None:
        verdict = Verdict.not_scanned(problem.reason, problem.detail)
        self.report.not_scanned += 1
        self._emit([Finding(self._record(target, target.uri_for(problem.relpath), verdict,
                                         Action.NOT_SCANNED), verdict)])

    def result(self, chunk: Chunk, result: ChunkResult) -> None:
        target = self.targets[chunk.target]
        report = self.report
        report.files += result.files
        report.scanned_bytes += result.scanned_bytes
        for why, n in result.skipped.items():
            report.skipped[why] = report.skipped.get(why, 0) + n
        out: list[Finding] = []
        for ff in result.findings:
            out.extend(self._file_findings(target, ff))
        self._emit(out)
        self._progress(target.display_path(result.last) if result.last else b"")

    def lost(self, chunk: Chunk, detail: str) -> None:
        """A chunk whose worker died: every file in it is reported as not scanned."""
        findings = [FileFinding(join(d.reldir, n), 0, 0, 0,
                                (Verdict.not_scanned(NotScannedReason.ERROR, detail),))
                    for d in chunk.dirs for n in d.names]
        self.result(chunk, ChunkResult(0, 0, {}, tuple(findings), b""))

    def _file_findings(self, target: Target, ff: FileFinding) -> list[Finding]:
        uri = target.uri_for(ff.relpath)
        detections = [v for v in ff.verdicts if v.kind is VerdictKind.DETECTED]
        remediation: Remediation | None = None
        if detections:
            host_path = join(target.root, ff.relpath) if target.context.scope is Scope.HOST else None
            obj = ScanObject(uri, ff.size, target.context, self.options.event, host_path=host_path)
            remedy = decide(target.context.scope, self.options.policy)
            location = RootedFile(target.root, ff.relpath, ff.dev, ff.ino)
            # one remedy per file: an archive with several infected members is deleted once
            remediation = remediate(obj, detections[0], remedy, location=location,
                                    level=self.options.policy.level)
        out: list[Finding] = []
        for v in ff.verdicts:
            if v.kind is VerdictKind.DETECTED and remediation is not None:
                self.report.detections += 1
                if remediation.action.removed_threat:
                    self.report.cleaned += 1
                out.append(Finding(self._record(target, uri, v, remediation.action, remediation.detail),
                                   v, remediation))
            elif v.kind is VerdictKind.NOT_SCANNED:
                self.report.not_scanned += 1
                out.append(Finding(self._record(target, uri, v, Action.NOT_SCANNED), v))
        return out

    def _progress(self, current: bytes) -> None:
        now = time.monotonic()
        r = self.report
        self.observer.progress(ScanProgress(r.files, r.scanned_bytes, r.detections, r.not_scanned,
                                            now - self.started, escape_text(os.fsdecode(current))))
        if self.journal is not None and now - self.last_session_update >= SESSION_UPDATE_SECONDS:
            self.last_session_update = now
            self._fill_session()
            self.journal.update_session(r.session)

    def _fill_session(self) -> None:
        r, s = self.report, self.report.session
        s.scanned, s.detections, s.cleaned = r.files, r.detections, r.cleaned
        s.not_scanned, s.scanned_bytes = r.not_scanned, r.scanned_bytes

    def finish(self, exit_code: int) -> None:
        self.report.elapsed = time.monotonic() - self.started
        self._fill_session()
        self.report.session.exit_code = exit_code
        if self.journal is not None:
            self.journal.finish_session(self.report.session)


def run_scan(targets: Sequence[Target], options: ScanOptions, *, engine_factory: EngineFactory,
             journal: JournalStore | None = None, observer: ScanObserver | None = None,
             texts: Sequence[str] | None = None) -> ScanReport:
    """Scan resolved targets; returns the report (its ``exit_code`` is the classic one).

    Every detection and not-scanned object becomes a journal record in a session of its own.
    Raises :class:`ScanError` when the scan cannot run at all (the session is still closed,
    with exit code 100); ``KeyboardInterrupt`` stops the workers and closes the session (130).
    """
    session = ScanSession(targets=list(texts) if texts is not None else [t.text for t in targets],
                          module=options.module, user=options.user or invoking_user())
    if journal is not None:
        journal.start_session(session)
    workers = options.worker_count()
    report = ScanReport(session, workers=workers)
    run = _Run(targets, options, journal, observer or NullObserver(), report)
    stats = WalkStats()
    excluder = Excluder(options.exclude)
    exit_code = EXIT_ERROR
    try:
        _drive(run, targets, options, engine_factory, workers, excluder, stats)
        for why, n in stats.skipped.items():
            report.skipped[why] = report.skipped.get(why, 0) + n
        exit_code = report.exit_code
    except KeyboardInterrupt:
        exit_code = 130
        raise
    finally:
        run.finish(exit_code)
    return report


def _drive(run: _Run, targets: Sequence[Target], options: ScanOptions, factory: EngineFactory,
           workers: int, excluder: Excluder, stats: WalkStats) -> None:
    def new_executor() -> _InProcess | _Pool:
        return _InProcess(factory) if workers == 1 else _Pool(factory, workers)

    executor = new_executor()
    restarts = 0
    worked = False
    inflight: dict[cf.Future[ChunkResult], Chunk] = {}
    limit = max(2, workers * 3)

    def collect(done: set[cf.Future[ChunkResult]]) -> None:
        nonlocal executor, restarts, worked
        broken = False
        for fut in done:
            chunk = inflight.pop(fut)
            try:
                result = fut.result()
                worked = True
                run.result(chunk, result)
            except EngineUnavailable as exc:
                raise ScanError(f"the scan engine could not be loaded: {exc}") from None
            except BrokenProcessPool:
                if not worked:  # never got one result: the workers cannot start at all
                    raise ScanError("scan worker processes could not start (they exit at once); "
                                    "try --workers 1 or --debug") from None
                broken = True
                run.lost(chunk, "scan worker process died")
        if broken:
            for fut, chunk in list(inflight.items()):  # the rest of a broken pool fails too
                inflight.pop(fut)
                run.lost(chunk, "scan worker process died")
            restarts += 1
            if restarts > MAX_POOL_RESTARTS:
                raise ScanError(f"scan worker processes died {restarts} times; giving up")
            with contextlib.suppress(Exception):
                executor.shutdown()
            executor = new_executor()

    try:
        for index, target in enumerate(targets):
            for item in _chunks(index, target, options, excluder, stats):
                if isinstance(item, WalkProblem):
                    run.problem(target, item)
                    continue
                inflight[executor.submit(item)] = item
                while len(inflight) >= limit:
                    done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                    collect(done)
                # harvest what is ready without waiting, so progress keeps moving
                ready = {f for f in inflight if f.done()}
                if ready:
                    collect(ready)
        while inflight:
            done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
            collect(done)
    except BaseException:
        executor.shutdown(now=True)
        raise
    executor.shutdown()
