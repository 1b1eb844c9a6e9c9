"""Image targets of ``hullguard scan``: ``image:``, ``docker-archive:``, ``oci:``, ``containerd:``, ``podman:``.

``cli/scan.py`` hands the image targets here and merges the result with the path scan, so
both share one output, one journal and the classic exit codes. The scanning itself is in
agent/imagescan.py (scheduled scans use it too). ``--fail-on TYPE``
narrows which detections make the exit code 50, for CI pipelines that gate on some types.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hullguard.agent import imagescan
from hullguard.agent.config import Config
from hullguard.agent.imagescan import max_exit, merge_reports, split_targets
from hullguard.agent.ondemand import (
    EXIT_CLEAN,
    EXIT_CLEANED,
    EXIT_NOT_SCANNED,
    EXIT_THREATS,
    Finding,
    ScanObserver,
    ScanReport,
)
from hullguard.cli.context import UserError
from hullguard.journal.record import RecordKind
from hullguard.journal.store import JournalStore

__all__ = ["exit_code", "max_exit", "merge_reports", "parse_fail_on", "run_image_scan", "split_targets"]

NAMESPACE_HELP = "containerd namespace for containerd: targets (k8s.io on Kubernetes nodes)."
PLATFORM_HELP = "Platform to scan in multi-platform images (OS/ARCH[/VARIANT]); default: the host's."
FAIL_ON_HELP = ("Only detections of this type (the Type column, e.g. 'Trojan'; case-insensitive) make "
                "the exit code 50; repeatable or comma-separated. Default: every detection.")


def run_image_scan(texts: Sequence[str], config: Config, *, namespace: str | None = None,
                   platform: str | None = None, journal: JournalStore | None = None,
                   observer: ScanObserver | None = None) -> ScanReport:
    """agent/imagescan.py's scan; a bad target or signature set is a user error (exit 100)."""
    try:
        return imagescan.run_image_scan(texts, config, namespace=namespace, platform=platform, journal=journal,
                                        observer=observer, warn=_warn)
    except imagescan.ImageScanError as exc:
        raise UserError(str(exc)) from None


def _warn(text: str) -> None:
    sys.stderr.write(f"hullguard: warning: {text}\n")


def parse_fail_on(values: Sequence[str] | None) -> set[str]:
    return {v.strip().casefold() for item in values or () for v in item.split(",") if v.strip()}


def exit_code(report: ScanReport, fail_on: set[str]) -> int:
    """The classic exit code; with ``fail_on``, only detections of those types count as threats."""
    if not fail_on:
        return report.exit_code
    failing = [f for f in report.findings if f.record.kind is RecordKind.DETECTION
               and f.record.type.casefold() in fail_on and not _removed(f)]
    if failing:
        return EXIT_THREATS
    if report.not_scanned:
        return EXIT_NOT_SCANNED
    return EXIT_CLEANED if report.cleaned else EXIT_CLEAN


def _removed(f: Finding) -> bool:
    return f.remediation is not None and f.remediation.action.removed_threat
