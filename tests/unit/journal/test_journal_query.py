"""Filter spellings: --since times, module aliases, kinds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hullguard.journal.query import module_alias, parse_kinds, parse_since, resolve_module
from hullguard.journal.record import Module, RecordKind

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("10m", NOW - timedelta(minutes=10)),
    ("2h", NOW - timedelta(hours=2)),
    ("7d", NOW - timedelta(days=7)),
    ("1w", NOW - timedelta(days=7)),
    ("30s", NOW - timedelta(seconds=30)),
    (" 3 H ", NOW - timedelta(hours=3)),
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ("2024-05-01 12:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-05-01T12:30:15Z", datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)),
    ("2024-05-01T14:30+02:00", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
])
def test_parse_since(text: str, expected: datetime) -> None:
    got = parse_since(text, now=NOW)
    assert got == expected
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "yesterday", "10x", "-5m", "2024-13-01", "m10", "99999999999999d"])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_since(text, now=NOW)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "module"), [
    ("On-demand scan", Module.ON_DEMAND), ("on-demand SCAN", Module.ON_DEMAND),
    ("on-demand", Module.ON_DEMAND), ("realtime", Module.REALTIME), ("Real-Time", Module.REALTIME),
    ("behaviour", Module.BEHAVIOUR), ("behavior", Module.BEHAVIOUR), ("web", Module.WEB),
    ("image", Module.IMAGE), ("admission", Module.ADMISSION), ("quarantine", Module.QUARANTINE),
    ("Real-time file system protection", Module.REALTIME), ("agent", Module.AGENT),
])
def test_resolve_module(text: str, module: Module) -> None:
    assert resolve_module(text) == module.value


def test_resolve_module_unknown_lists_aliases() -> None:
    with pytest.raises(ValueError, match="on-demand, realtime, behaviour"):
        resolve_module("antivirus")


def test_module_alias() -> None:
    assert module_alias(Module.REALTIME.value) == "realtime"
    assert module_alias("Something new") == "Something new"
    for module in Module:
        assert resolve_module(module_alias(module.value)) == module.value


def test_parse_kinds() -> None:
    assert parse_kinds("detection") == (RecordKind.DETECTION,)
    assert parse_kinds("NOT_SCANNED") == parse_kinds("not-scanned") == (RecordKind.NOT_SCANNED,)
    assert set(parse_kinds("all")) == set(RecordKind)
    with pytest.raises(ValueError, match="detection, not_scanned, event, all"):
        parse_kinds("virus")
