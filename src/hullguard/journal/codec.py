"""How journal values become text: one time format and one dictionary shape for every output.

The store, the JSON/SARIF exporters and the control API all go through these functions, so a
record looks the same in SQLite, in ``hullguard log --format json`` and over the API.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from hullguard.journal.record import DetectionRecord, RecordKind, ScanSession


def to_iso(moment: datetime) -> str:
    """UTC, fixed width, microseconds, ``Z`` suffix: sorts as text, so SQLite can index and compare it.

    A naive datetime is taken to be UTC (the journal never deals in local time).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def from_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def storable(text: str) -> str:
    """Text that encodes as UTF-8: lone surrogates (undecodable file name bytes) become ``\\xNN``.

    Object URIs arrive escaped already (``ObjectURI.display()``); this protects the other fields
    (process names, user names, reasons) so one odd byte can never make a record unwritable.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte smuggled through surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


RECORD_KEYS: tuple[str, ...] = (
    "id", "time", "kind", "level", "module", "object", "detection", "type", "action", "user",
    "process", "event", "sha1", "info", "container_id", "container_name", "image", "layer",
    "session_id",
)
"""Key order of a record as a dictionary (JSON, API): stable, snake_case, every field."""

SESSION_KEYS: tuple[str, ...] = (
    "id", "module", "start", "end", "targets", "scanned", "detections", "cleaned", "not_scanned",
    "scanned_bytes", "exit_code", "user",
)

_RECORD_FIELDS = {f.name for f in fields(DetectionRecord)}
_SESSION_FIELDS = {f.name for f in fields(ScanSession)}
assert set(RECORD_KEYS) == _RECORD_FIELDS, "RECORD_KEYS must list every DetectionRecord field"
assert set(SESSION_KEYS) == _SESSION_FIELDS, "SESSION_KEYS must list every ScanSession field"


def record_to_dict(record: DetectionRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in RECORD_KEYS:
        value = getattr(record, key)
        if isinstance(value, datetime):
            value = to_iso(value)
        elif isinstance(value, RecordKind):
            value = value.value
        elif isinstance(value, str):
            value = storable(value)
        out[key] = value
    return out


def record_from_dict(data: dict[str, Any]) -> DetectionRecord:
    """The inverse of :func:`record_to_dict`; unknown keys are an error, missing ones take defaults."""
    unknown = set(data) - _RECORD_FIELDS
    if unknown:
        raise ValueError(f"unknown record keys: {', '.join(sorted(unknown))}")
    kwargs = dict(data)
    if "time" in kwargs:
        kwargs["time"] = from_iso(str(kwargs["time"]))
    if "kind" in kwargs:
        kwargs["kind"] = RecordKind(kwargs["kind"])
    return DetectionRecord(**kwargs)


def session_to_dict(session: ScanSession) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in SESSION_KEYS:
        value = getattr(session, key)
        if isinstance(value, datetime):
            value = to_iso(value)
        elif isinstance(value, str):
            value = storable(value)
        elif key == "targets":
            value = [storable(t) for t in value]
        out[key] = value
    return out
