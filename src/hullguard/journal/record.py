"""Detection records and scan sessions: the journal's model.

Plain values only (no engine or object types), so the journal sits below everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum


class Module(str, Enum):
    ON_DEMAND = "On-demand scan"
    REALTIME = "Real-time file system protection"
    BEHAVIOUR = "Behaviour monitoring"
    WEB = "Web access protection"
    IMAGE = "Container image scan"
    ADMISSION = "Admission control"
    QUARANTINE = "Quarantine"
    AGENT = "Agent"


class Level(str, Enum):
    ERROR = "Error"
    WARNING = "Warning"
    INFO = "Information"


class RecordKind(str, Enum):
    DETECTION = "detection"
    NOT_SCANNED = "not_scanned"
    EVENT = "event"


CSV_COLUMNS = ("Time", "Level", "Module", "Object", "Detection", "Type", "Action",
               "User", "Process", "Event", "SHA1", "Info")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DetectionRecord:
    module: str
    object: str
    """The object URI, already escaped for display (``ObjectURI.display()``)."""
    detection: str = ""
    type: str = ""
    action: str = ""
    level: str = Level.ERROR.value
    user: str = ""
    process: str = ""
    event: str = ""
    sha1: str = ""
    info: str = ""
    """Engine tags for detections (``@NAME=...``), the reason for not-scanned records."""
    kind: RecordKind = RecordKind.DETECTION
    time: datetime = field(default_factory=utcnow)
    container_id: str = ""
    container_name: str = ""
    image: str = ""
    layer: str = ""
    session_id: int | None = None
    id: int | None = None

    def csv_row(self) -> tuple[str, ...]:
        return (self.time.strftime("%Y-%m-%d %H:%M:%S"), self.level, self.module, self.object,
                self.detection, self.type, self.action, self.user, self.process, self.event,
                self.sha1, self.info)


@dataclass
class ScanSession:
    """One scan run (on-demand, scheduled, image scan); counters are filled in as it goes."""

    targets: list[str]
    module: str = Module.ON_DEMAND.value
    start: datetime = field(default_factory=utcnow)
    end: datetime | None = None
    scanned: int = 0
    detections: int = 0
    cleaned: int = 0
    not_scanned: int = 0
    scanned_bytes: int = 0
    exit_code: int | None = None
    user: str = ""
    id: int | None = None
