"""Scanning image targets (``image:``, ``docker-archive:``, ``oci:``, ``containerd:``, ``podman:``)
as one journal session: shared by ``hullguard scan`` and the agent's scheduled scans.

Images are scanned in this process, layer by layer, with the layer cache of the state
directory; the path scan and the image scan are merged into one report so both share one
output and the classic exit codes.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence

from hullguard.agent.config import Config
from hullguard.agent.imagerecords import error_record, finding_record, image_options, layer_cache_path
from hullguard.agent.ondemand import (
    EXIT_CLEAN,
    EXIT_CLEANED,
    EXIT_NOT_SCANNED,
    EXIT_THREATS,
    Finding,
    ScanObserver,
    ScanProgress,
    ScanReport,
    invoking_user,
)
from hullguard.engine.verdict import NotScannedReason, Verdict, VerdictKind
from hullguard.journal.record import Module, ScanSession
from hullguard.journal.store import JournalStore
from hullguard.objects.images.api import ImageOptions, ImageTarget, is_image_target, scan_image_target
from hullguard.objects.images.manifest import ImageError
from hullguard.objects.images.scanner import ImageScanner
from hullguard.objects.layercache import LayerCache

log = logging.getLogger(__name__)


class ImageScanError(ValueError):
    """The image scan cannot start (bad target text, bad signatures); the message says why."""


def _warn(text: str) -> None:
    log.warning("%s", text)


def split_targets(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """(image targets, everything else) in the order given."""
    images = [t for t in texts if is_image_target(t)]
    return images, [t for t in texts if not is_image_target(t)]


def _open_cache(config: Config, warn: Callable[[str], None]) -> LayerCache:
    try:
        return LayerCache.open(layer_cache_path(config))
    except (OSError, sqlite3.Error) as exc:
        warn(f"layer cache {layer_cache_path(config)} unavailable ({exc}); scanning without it")
        return LayerCache.memory()


def run_image_scan(texts: Sequence[str], config: Config, *, namespace: str | None = None,
                   platform: str | None = None, journal: JournalStore | None = None,
                   observer: ScanObserver | None = None, user: str = "",
                   warn: Callable[[str], None] = _warn) -> ScanReport:
    """Scan image targets; every finding is journaled in a session of the image-scan module.

    Raises :class:`ImageScanError` when a target or the signatures are bad.
    """
    from hullguard.engine.engine import Engine
    from hullguard.engine.errors import SignatureError

    try:
        targets = [t for t in (ImageTarget.parse(x) for x in texts) if t is not None]
        options = image_options(config.images, namespace=namespace, platform=platform)
    except ImageError as exc:
        raise ImageScanError(str(exc)) from None
    try:
        engine = Engine.from_config(config.engine)
    except SignatureError as exc:
        raise ImageScanError(f"signatures: {exc}") from None
    session = ScanSession(targets=list(texts), module=Module.IMAGE.value, user=user or invoking_user())
    if journal is not None:
        journal.start_session(session)
    report = ScanReport(session, workers=1)
    start = time.monotonic()
    cache = _open_cache(config, warn)
    scanner = ImageScanner(engine, cache)
    try:
        for target in targets:
            findings = _scan_one(target, scanner, options, session, report)
            if journal is not None and findings:
                journal.add_many(f.record for f in findings)
            for f in findings:
                report.findings.append(f)
                if observer is not None:
                    observer.finding(f)
            if observer is not None:
                observer.progress(ScanProgress(report.files, report.scanned_bytes, report.detections,
                                               report.not_scanned, time.monotonic() - start, target.text))
    finally:
        cache.close()
        report.elapsed = time.monotonic() - start
        session.scanned, session.detections, session.not_scanned = (report.files, report.detections,
                                                                     report.not_scanned)
        session.scanned_bytes = report.scanned_bytes
        session.exit_code = report.exit_code
        if journal is not None:
            journal.finish_session(session)
    return report


def _scan_one(target: ImageTarget, scanner: ImageScanner, options: ImageOptions, session: ScanSession,
              report: ScanReport) -> list[Finding]:
    try:
        image = scan_image_target(target, scanner, options)
    except ImageError as exc:
        report.not_scanned += 1
        verdict = Verdict.not_scanned(NotScannedReason.UNREADABLE, str(exc))
        return [Finding(error_record(target.text, str(exc), session_id=session.id), verdict)]
    report.files += image.files
    report.scanned_bytes += image.scanned_bytes
    out = []
    for f in image.findings:
        if f.verdict.kind is VerdictKind.DETECTED:
            report.detections += 1
        else:
            report.not_scanned += 1
        out.append(Finding(finding_record(image, f, session_id=session.id), f.verdict))
    return out


def merge_reports(first: ScanReport | None, second: ScanReport | None) -> ScanReport:
    """One report for output: the path scan's session, both findings, summed counters."""
    if first is None or second is None:
        out = first or second
        assert out is not None
        return out
    merged = ScanReport(first.session, findings=first.findings + second.findings,
                        files=first.files + second.files, scanned_bytes=first.scanned_bytes + second.scanned_bytes,
                        detections=first.detections + second.detections, cleaned=first.cleaned + second.cleaned,
                        not_scanned=first.not_scanned + second.not_scanned, skipped=dict(first.skipped),
                        elapsed=first.elapsed + second.elapsed, workers=max(first.workers, second.workers))
    merged.session.exit_code = max_exit(first.exit_code, second.exit_code)
    return merged


def max_exit(a: int, b: int) -> int:
    order = [EXIT_THREATS, EXIT_NOT_SCANNED, EXIT_CLEANED, EXIT_CLEAN]
    for code in order:
        if code in (a, b):
            return code
    return max(a, b)
