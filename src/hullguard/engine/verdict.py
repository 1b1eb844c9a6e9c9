"""What the engine says about one object (or one member inside an archive).

A scan never raises for bad input: everything that went wrong is a ``NOT_SCANNED``
verdict with a reason, so the caller can report it and go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class VerdictKind(str, Enum):
    CLEAN = "clean"
    DETECTED = "detected"
    NOT_SCANNED = "not_scanned"


class NotScannedReason(str, Enum):
    """Why an object (or part of it) was not scanned; the value is the user-facing text."""

    TOO_LARGE = "too large"
    ENCRYPTED = "encrypted"
    DEPTH_LIMIT = "archive depth limit reached"
    FILE_COUNT_LIMIT = "archive file count limit reached"
    TOTAL_SIZE_LIMIT = "archive total size limit reached"
    RATIO_LIMIT = "compression ratio limit reached"
    CORRUPT = "corrupt or truncated"
    UNREADABLE = "unreadable"
    VANISHED = "vanished"
    CHANGED = "changed during scan"
    NOT_REGULAR = "not a regular file"
    SYMLINK = "symbolic link"
    TIMEOUT = "timeout"
    OUT_OF_ROOT = "outside the scanned root"
    ERROR = "error"


@dataclass(frozen=True)
class Detection:
    """A match: ``name`` and ``type`` are what the journal shows, ``tags`` the classic engine tags."""

    name: str
    type: str
    suspicion: str = "inf"
    tags: str = ""
    signature: str = ""
    """Where the match came from, e.g. ``builtin:eicar``, ``hsb:/path/x.hsb:12``, ``yara:rule_id``."""
    engine: str = "hullguard"

    @staticmethod
    def make_tags(name: str, kind: str, suspicion: str = "inf") -> str:
        return f"@NAME={name}@TYPE={kind}@SUSP={suspicion}"


@dataclass(frozen=True)
class Verdict:
    """The result for one object, or for one member when ``inner`` is not empty.

    ``inner`` holds the member names inside (nested) archives, outermost first, so the
    URI of the member is ``uri.child(*inner)``. ``sha1`` is set for detections (upper-case
    hex of the bytes that matched), since the journal records it.
    """

    kind: VerdictKind
    inner: tuple[str, ...] = ()
    detection: Detection | None = None
    reason: NotScannedReason | None = None
    detail: str = ""
    sha1: str = ""

    @staticmethod
    def clean(inner: tuple[str, ...] = ()) -> Verdict:
        return Verdict(VerdictKind.CLEAN, inner)

    @staticmethod
    def detected(detection: Detection, sha1: str, inner: tuple[str, ...] = ()) -> Verdict:
        return Verdict(VerdictKind.DETECTED, inner, detection=detection, sha1=sha1)

    @staticmethod
    def not_scanned(reason: NotScannedReason, detail: str = "", inner: tuple[str, ...] = ()) -> Verdict:
        return Verdict(VerdictKind.NOT_SCANNED, inner, reason=reason, detail=detail)


@dataclass(frozen=True)
class ScanOutcome:
    """Everything the engine found in one top-level object.

    ``verdicts`` lists detections and not-scanned parts; an empty list means clean.
    ``scanned_bytes`` counts the bytes the engine looked at (archive members included).
    """

    verdicts: tuple[Verdict, ...] = field(default_factory=tuple)
    scanned_bytes: int = 0

    @property
    def detections(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.kind is VerdictKind.DETECTED)

    @property
    def not_scanned(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.kind is VerdictKind.NOT_SCANNED)

    @property
    def is_clean(self) -> bool:
        return not self.verdicts
