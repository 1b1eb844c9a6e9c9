"""Exports: the classic CSV, JSON / JSON Lines, SARIF 2.1.0 structure, RFC 5424 syslog lines."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from hullguard import __version__
from hullguard.journal import export
from hullguard.journal.codec import RECORD_KEYS, record_from_dict, record_to_dict
from hullguard.journal.record import CSV_COLUMNS, DetectionRecord, Level, Module, RecordKind, ScanSession

SHA1 = "3395856CE81F2B7382DEE72602F798B642F14140"
T0 = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
CID = "0123456789abcdef" * 4


def sample(**kw: Any) -> DetectionRecord:
    base: dict[str, Any] = dict(
        time=T0, level=Level.ERROR.value, module=Module.ON_DEMAND.value,
        object="file:///tmp/t/eicar.com", detection="Eicar", type="Test file",
        action="Cleaned by deleting", user="root", process="hullguard", event="On-demand scan.",
        sha1=SHA1, info="@NAME=Eicar@TYPE=Teststring@SUSP=inf")
    base.update(kw)
    return DetectionRecord(**base)


def test_csv_header_and_exact_row() -> None:
    out = io.StringIO()
    assert export.write_csv([sample()], out) == 1
    assert out.getvalue() == (
        "Time,Level,Module,Object,Detection,Type,Action,User,Process,Event,SHA1,Info\n"
        "2024-05-01 12:00:00,Error,On-demand scan,file:///tmp/t/eicar.com,Eicar,Test file,"
        f"Cleaned by deleting,root,hullguard,On-demand scan.,{SHA1},@NAME=Eicar@TYPE=Teststring@SUSP=inf\n")
    assert tuple(out.getvalue().splitlines()[0].split(",")) == CSV_COLUMNS


def test_csv_time_is_utc_and_awkward_values_are_quoted() -> None:
    plus2 = timezone(timedelta(hours=2))
    record = sample(time=datetime(2024, 5, 1, 14, 0, 0, tzinfo=plus2),
                    object='file:///tmp/a,b "c"\\x0a/файл', process="p\udcff")
    out = io.StringIO()
    export.write_csv([record], out, header=False)
    [row] = list(csv.reader(io.StringIO(out.getvalue())))
    assert row[0] == "2024-05-01 12:00:00"
    assert row[3] == 'file:///tmp/a,b "c"\\x0a/файл'
    assert row[8] == "p\\xff"
    assert "\r" not in out.getvalue()


def test_csv_extended_columns() -> None:
    out = io.StringIO()
    export.write_csv([sample(container_id=CID, container_name="web", image="nginx", session_id=3)],
                     out, extended=True)
    header, row = list(csv.reader(io.StringIO(out.getvalue())))
    assert header[:12] == list(CSV_COLUMNS)
    assert dict(zip(header[12:], row[12:], strict=True)) == {
        "Kind": "detection", "Container ID": CID, "Container name": "web", "Image": "nginx",
        "Layer": "", "Session": "3"}


def test_json_array_has_every_field_and_round_trips() -> None:
    records = [sample(id=1, session_id=2, container_id=CID, object="file:///é\\xff"),
               sample(id=2, kind=RecordKind.NOT_SCANNED, detection="", info="encrypted")]
    out = io.StringIO()
    assert export.write_json(records, out) == 2
    data = json.loads(out.getvalue())
    assert isinstance(data, list) and len(data) == 2
    assert list(data[0]) == list(RECORD_KEYS)
    assert data[0]["time"] == "2024-05-01T12:00:00.250000Z"
    assert data[0]["kind"] == "detection" and data[1]["kind"] == "not_scanned"
    assert data[0]["session_id"] == 2 and data[0]["container_id"] == CID
    assert data[0]["object"] == "file:///é\\xff"
    assert [record_from_dict(d) for d in data] == records


def test_json_empty_and_lines() -> None:
    out = io.StringIO()
    assert export.write_json([], out) == 0
    assert json.loads(out.getvalue()) == []
    out = io.StringIO()
    export.write_json([sample(detection="a"), sample(detection="b")], out, lines=True)
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["detection"] for line in lines] == ["a", "b"]


def test_record_from_dict_rejects_unknown_keys() -> None:
    data = record_to_dict(sample())
    data["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        record_from_dict(data)


def test_sessions_exports() -> None:
    s = ScanSession(targets=["/tmp/t", "container:web"], start=T0, end=T0 + timedelta(seconds=5),
                    scanned=3, detections=1, cleaned=1, not_scanned=0, scanned_bytes=100, exit_code=1,
                    user="root", id=4)
    out = io.StringIO()
    export.write_sessions_csv([s], out)
    header, row = list(csv.reader(io.StringIO(out.getvalue())))
    assert header == list(export.SESSION_CSV_COLUMNS)
    assert row == ["4", "On-demand scan", "2024-05-01 12:00:00", "2024-05-01 12:00:05",
                   "/tmp/t; container:web", "3", "1", "1", "0", "100", "1", "root"]
    out = io.StringIO()
    export.write_sessions_json([s, ScanSession(targets=[], start=T0)], out)
    data = json.loads(out.getvalue())
    assert data[0]["targets"] == ["/tmp/t", "container:web"]
    assert data[0]["end"] == "2024-05-01T12:00:05.250000Z" and data[1]["end"] is None
    assert data[1]["exit_code"] is None


def _sarif(records: list[DetectionRecord]) -> dict[str, Any]:
    out = io.StringIO()
    count = export.write_sarif(records, out)
    document: dict[str, Any] = json.loads(out.getvalue())
    assert count == len(records)
    return document


def _check_sarif_shape(doc: dict[str, Any]) -> None:
    """The parts of the SARIF 2.1.0 schema a consumer relies on, checked by hand."""
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(doc["runs"], list) and len(doc["runs"]) == 1
    run = doc["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "hullguard" and driver["version"] == __version__
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    for rule in driver["rules"]:
        assert isinstance(rule["shortDescription"]["text"], str) and rule["shortDescription"]["text"]
    for result in run["results"]:
        assert result["level"] in ("none", "note", "warning", "error")
        assert isinstance(result["message"]["text"], str) and result["message"]["text"]
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        for loc in result["locations"]:
            uri = loc["physicalLocation"]["artifactLocation"]["uri"]
            # RFC 3986 characters only
            assert re.fullmatch(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", uri), uri
        assert isinstance(result["properties"], dict)


def test_sarif_structure_levels_rules_and_properties() -> None:
    records = [
        sample(id=1),
        sample(id=2, level=Level.WARNING.value, object="file:///srv/a b/é.zip!/in/x.com",
               action="Retained", container_id=CID, container_name="web", image="nginx:1",
               layer="sha256:" + "ab" * 32, session_id=9),
        sample(id=3, level=Level.INFO.value, detection="Win.Trojan.X", type="Trojan"),
        sample(id=4, level=Level.WARNING.value, kind=RecordKind.NOT_SCANNED, detection="", type="",
               action="Not scanned", info="archive limit reached: max files", object="file:///big.tar"),
    ]
    doc = _sarif(records)
    _check_sarif_shape(doc)
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["Eicar", "Win.Trojan.X", export.NOT_SCANNED_RULE]
    assert rules[0]["shortDescription"]["text"] == "Test file"
    assert rules[1]["shortDescription"]["text"] == "Trojan"
    results = run["results"]
    assert [r["level"] for r in results] == ["error", "warning", "note", "warning"]
    assert [r["ruleId"] for r in results] == ["Eicar", "Eicar", "Win.Trojan.X", export.NOT_SCANNED_RULE]
    first = results[0]
    assert first["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "file:///tmp/t/eicar.com"
    assert "Eicar" in first["message"]["text"] and "Cleaned by deleting" in first["message"]["text"]
    assert first["properties"]["sha1"] == SHA1
    assert first["properties"]["action"] == "Cleaned by deleting"
    assert first["properties"]["engineTags"] == {"NAME": "Eicar", "TYPE": "Teststring", "SUSP": "inf"}
    assert first["provenance"]["firstDetectionTimeUtc"] == "2024-05-01T12:00:00.250000Z"
    second = results[1]
    assert second["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        "file:///srv/a%20b/%C3%A9.zip!/in/x.com"
    assert second["properties"]["object"] == "file:///srv/a b/é.zip!/in/x.com"
    assert second["properties"]["container"] == CID
    assert second["properties"]["image"] == "nginx:1"
    assert second["properties"]["layer"] == "sha256:" + "ab" * 32
    assert second["properties"]["session"] == 9
    assert "archive limit reached" in results[3]["message"]["text"]


def test_sarif_empty_log_is_valid() -> None:
    doc = _sarif([])
    _check_sarif_shape(doc)
    assert doc["runs"][0]["results"] == [] and doc["runs"][0]["tool"]["driver"]["rules"] == []


SYSLOG_RE = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) "
    r"(?P<sd>-|\[.*\]) (?P<msg>.*)$")


def test_syslog_rfc5424_line() -> None:
    line = export.format_syslog(sample(id=5, container_id=CID), hostname="node1", procid=42)
    m = SYSLOG_RE.match(line)
    assert m, line
    assert int(m["pri"]) == 16 * 8 + 3  # local0.err
    assert m["ts"] == "2024-05-01T12:00:00.250000Z"
    assert (m["host"], m["app"], m["proc"], m["msgid"]) == ("node1", "hullguard", "42", "detection")
    assert m["sd"].startswith("[hullguard@32473 ")
    assert 'detection="Eicar"' in m["sd"] and f'sha1="{SHA1}"' in m["sd"]
    assert f'containerId="{CID}"' in m["sd"] and 'recordId="5"' in m["sd"]
    assert "image=" not in m["sd"]  # empty fields are left out
    assert m["msg"] == "Eicar (Test file) in file:///tmp/t/eicar.com: Cleaned by deleting"
    assert "\n" not in line


def test_syslog_escapes_structured_data_and_stays_one_line() -> None:
    record = sample(level=Level.WARNING.value, object='file:///x]"y\\z', process="a\nb",
                    kind=RecordKind.NOT_SCANNED, detection="", info="too large")
    line = export.format_syslog(record, hostname="my host", procid=1, facility=4)
    assert line.startswith("<36>1 ")  # auth.warning
    assert " my_host " in line
    assert 'object="file:///x\\]\\"y\\\\z"' in line
    assert "\n" not in line and "a\\\\x0ab" in line
    assert line.split(" ")[5] == "not_scanned"
    with pytest.raises(ValueError):
        export.format_syslog(record, facility=24)
