"""Detection records out of the journal: CSV, JSON (array or lines), SARIF 2.1.0 and syslog lines.

CSV keeps the classic on-demand scanner's column order (``CSV_COLUMNS``) so existing parsers of
that log read ours. JSON carries every field (``codec.RECORD_KEYS``). SARIF is for code-scanning
dashboards (GitHub, GitLab, DefectDojo): one rule per detection name, one result per record.
Syslog lines follow RFC 5424 with the fields as structured data, so collectors can index them
without parsing free text.
"""

from __future__ import annotations

import csv
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote

from hullguard import __version__
from hullguard.journal.codec import record_to_dict, session_to_dict, storable, to_iso
from hullguard.journal.record import CSV_COLUMNS, DetectionRecord, Level, RecordKind, ScanSession

EXTENDED_CSV_COLUMNS = (*CSV_COLUMNS, "Kind", "Container ID", "Container name", "Image", "Layer",
                        "Session")
SESSION_CSV_COLUMNS = ("ID", "Module", "Start", "End", "Targets", "Scanned", "Detections", "Cleaned",
                       "Not scanned", "Scanned bytes", "Exit code", "User")

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
NOT_SCANNED_RULE = "hullguard.not-scanned"
EVENT_RULE = "hullguard.event"

SYSLOG_SD_ID = "hullguard@32473"
"""RFC 5424 SD-ID; 32473 is the private enterprise number reserved for examples (RFC 5612)."""
SYSLOG_FACILITY_LOCAL0 = 16
_SYSLOG_SEVERITY = {Level.ERROR.value: 3, Level.WARNING.value: 4, Level.INFO.value: 6}
_SARIF_LEVEL = {Level.ERROR.value: "error", Level.WARNING.value: "warning", Level.INFO.value: "note"}


# --- CSV ------------------------------------------------------------------------------------
def _utc(record: DetectionRecord) -> DetectionRecord:
    if record.time.tzinfo is None:
        return replace(record, time=record.time.replace(tzinfo=UTC))
    return replace(record, time=record.time.astimezone(UTC))


def csv_row(record: DetectionRecord, *, extended: bool = False) -> list[str]:
    """The record's CSV cells: ``record.csv_row()`` with the time in UTC and text made encodable."""
    row = [storable(cell) for cell in _utc(record).csv_row()]
    if extended:
        row += [RecordKind(record.kind).value, record.container_id, record.container_name,
                record.image, record.layer, "" if record.session_id is None else str(record.session_id)]
    return row


def write_csv(records: Iterable[DetectionRecord], stream: TextIO, *, header: bool = True,
              extended: bool = False) -> int:
    """Write a header (``Time,Level,Module,...``) and one row per record; returns the row count.

    ``extended`` appends kind, container, image, layer and session columns after the classic ones.
    """
    writer = csv.writer(stream, lineterminator="\n")
    if header:
        writer.writerow(EXTENDED_CSV_COLUMNS if extended else CSV_COLUMNS)
    count = 0
    for record in records:
        writer.writerow(csv_row(record, extended=extended))
        count += 1
    return count


# --- JSON -----------------------------------------------------------------------------------
def _write_objects(objects: Iterable[dict[str, Any]], stream: TextIO, *, lines: bool) -> int:
    """A JSON array with one object per line (readable, streamable), or JSON Lines."""
    count = 0
    for obj in objects:
        text = json.dumps(obj, ensure_ascii=False)
        if lines:
            stream.write(text + "\n")
        else:
            stream.write(("[\n" if count == 0 else ",\n") + text)
        count += 1
    if not lines:
        stream.write("[]\n" if count == 0 else "\n]\n")
    return count


def write_json(records: Iterable[DetectionRecord], stream: TextIO, *, lines: bool = False) -> int:
    """Every field of every record (keys as in ``codec.RECORD_KEYS``); returns the record count."""
    return _write_objects((record_to_dict(r) for r in records), stream, lines=lines)


def write_sessions_json(sessions: Iterable[ScanSession], stream: TextIO, *, lines: bool = False) -> int:
    return _write_objects((session_to_dict(s) for s in sessions), stream, lines=lines)


def write_sessions_csv(sessions: Iterable[ScanSession], stream: TextIO, *, header: bool = True) -> int:
    """One row per session; targets joined with ``"; "``, times as in the records' CSV (UTC)."""
    writer = csv.writer(stream, lineterminator="\n")
    if header:
        writer.writerow(SESSION_CSV_COLUMNS)
    count = 0
    for s in sessions:
        writer.writerow([
            "" if s.id is None else s.id, storable(s.module), _csv_time(s.start),
            _csv_time(s.end) if s.end else "", "; ".join(storable(t) for t in s.targets),
            s.scanned, s.detections, s.cleaned, s.not_scanned, s.scanned_bytes,
            "" if s.exit_code is None else s.exit_code, storable(s.user)])
        count += 1
    return count


def _csv_time(moment: datetime) -> str:
    text: str = to_iso(moment)
    return text[:19].replace("T", " ")


# --- SARIF ----------------------------------------------------------------------------------
def artifact_uri(obj: str) -> str:
    """The object URI as an RFC 3986 URI reference: anything outside the URI alphabet is
    percent-encoded (spaces, non-ASCII, the backslashes of escaped bytes); ``!/`` stays readable."""
    return quote(obj, safe=":/?#[]@!$&'()*+,;=~")


def _rule_id(record: DetectionRecord) -> str:
    kind = RecordKind(record.kind)
    if kind is RecordKind.NOT_SCANNED:
        return NOT_SCANNED_RULE
    if kind is RecordKind.EVENT:
        return EVENT_RULE
    return record.detection or "unknown"


def _rule_description(record: DetectionRecord) -> str:
    kind = RecordKind(record.kind)
    if kind is RecordKind.NOT_SCANNED:
        return "Object not scanned"
    if kind is RecordKind.EVENT:
        return "Journal event"
    return record.type or record.detection or "Detection"


def summary(record: DetectionRecord) -> str:
    """One human sentence for a record (SARIF message, syslog MSG)."""
    kind = RecordKind(record.kind)
    if kind is RecordKind.NOT_SCANNED:
        text = f"Not scanned: {record.object}"
        if record.info:
            text += f" ({record.info})"
    elif kind is RecordKind.EVENT:
        text = f"{record.event or record.info or 'Event'}: {record.object}"
    else:
        name = record.detection or "unknown threat"
        if record.type:
            name += f" ({record.type})"
        text = f"{name} in {record.object}"
    if record.action:
        text += f": {record.action}"
    return storable(text)


def _engine_tags(info: str) -> dict[str, str]:
    """``@NAME=Eicar@TYPE=Teststring@SUSP=inf`` as a dictionary; empty when info is not tags."""
    if not info.startswith("@"):
        return {}
    tags: dict[str, str] = {}
    for part in info[1:].split("@"):
        key, sep, value = part.partition("=")
        if sep and key:
            tags[key] = value
    return tags


def sarif_document(records: Iterable[DetectionRecord], *, tool_version: str = __version__) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    rule_index: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    for record in records:
        rule_id = _rule_id(record)
        if rule_id not in rule_index:
            rule_index[rule_id] = len(rules)
            rules.append({"id": rule_id, "shortDescription": {"text": _rule_description(record)}})
        properties: dict[str, Any] = {
            "kind": RecordKind(record.kind).value,
            "module": record.module,
            "object": record.object,
            "sha1": record.sha1,
            "action": record.action,
            "event": record.event,
            "user": record.user,
            "process": record.process,
            "container": record.container_id,
            "containerName": record.container_name,
            "image": record.image,
            "layer": record.layer,
            "info": record.info,
            "engineTags": _engine_tags(record.info),
        }
        if record.session_id is not None:
            properties["session"] = record.session_id
        if record.id is not None:
            properties["recordId"] = record.id
        results.append({
            "ruleId": rule_id,
            "ruleIndex": rule_index[rule_id],
            "level": _SARIF_LEVEL.get(record.level, "warning"),
            "message": {"text": summary(record)},
            "locations": [{"physicalLocation": {"artifactLocation": {
                "uri": artifact_uri(storable(record.object))}}}],
            "provenance": {"firstDetectionTimeUtc": to_iso(record.time)},
            "properties": {k: storable(v) if isinstance(v, str) else v for k, v in properties.items()},
        })
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {"name": "hullguard", "version": tool_version, "rules": rules}},
            "results": results,
        }],
    }


def write_sarif(records: Iterable[DetectionRecord], stream: TextIO, *,
                tool_version: str = __version__) -> int:
    """A SARIF 2.1.0 log with one run; returns the result count."""
    document = sarif_document(records, tool_version=tool_version)
    json.dump(document, stream, ensure_ascii=False, indent=2)
    stream.write("\n")
    return len(document["runs"][0]["results"])


# --- syslog ---------------------------------------------------------------------------------
def _header_token(text: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII, no spaces, at most ``limit`` chars, else ``-``."""
    token = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in text)[:limit]
    return token or "-"


def _sd_value(text: str) -> str:
    out: list[str] = []
    for ch in storable(text):
        if ch in '"\\]':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\\\x{ord(ch):02x}")  # keep the line one line
        else:
            out.append(ch)
    return "".join(out)


def _one_line(text: str) -> str:
    return "".join(ch if ord(ch) >= 0x20 and ord(ch) != 0x7F else f"\\x{ord(ch):02x}" for ch in text)


def format_syslog(record: DetectionRecord, *, hostname: str | None = None, app_name: str = "hullguard",
                  procid: int | str | None = None, facility: int = SYSLOG_FACILITY_LOCAL0) -> str:
    """One RFC 5424 line (no trailing newline) for a record.

    ``<PRI>1 TIMESTAMP HOSTNAME hullguard PROCID MSGID [hullguard@32473 module="..." ...] MSG``:
    PRI from ``facility`` (default local0) and the level (Error=err, Warning=warning,
    Information=info); MSGID is the record kind; empty fields are left out of the structured
    data; MSG is the summary sentence, UTF-8 without a BOM (RFC 5424 MSG-ANY).
    """
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0..23, got {facility}")
    pri = facility * 8 + _SYSLOG_SEVERITY.get(record.level, 5)
    host = _header_token(hostname if hostname is not None else socket.gethostname(), 255)
    proc = _header_token(str(os.getpid() if procid is None else procid), 128)
    msgid = _header_token(RecordKind(record.kind).value, 32)
    params = {
        "module": record.module, "object": record.object, "detection": record.detection,
        "type": record.type, "action": record.action, "level": record.level, "user": record.user,
        "process": record.process, "event": record.event, "sha1": record.sha1, "info": record.info,
        "containerId": record.container_id, "containerName": record.container_name,
        "image": record.image, "layer": record.layer,
        "session": "" if record.session_id is None else str(record.session_id),
        "recordId": "" if record.id is None else str(record.id),
    }
    sd = " ".join(f'{k}="{_sd_value(v)}"' for k, v in params.items() if v)
    structured = f"[{SYSLOG_SD_ID} {sd}]" if sd else "-"
    return (f"<{pri}>1 {to_iso(record.time)} {host} {_header_token(app_name, 48)} {proc} {msgid} "
            f"{structured} {_one_line(summary(record))}")
