"""Event records (replay format), journal records of matches, the exec gate, rules CLI, reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hullguard.behavior.enrich import Enricher
from hullguard.behavior.event import Event, EventFormatError, event_from_record
from hullguard.behavior.gate import ExecGate
from hullguard.behavior.respond import Responder, build_record
from hullguard.behavior.ruleset import RuleMatch, load_rules, load_rules_text
from hullguard.behavior.service import BehaviorService, ServiceOptions
from hullguard.cli.main import app
from hullguard.journal.record import DetectionRecord, Module
from hullguard.runtime.docker import ContainerInfo

CID = "c0ffee" * 10 + "abcd"


def test_record_round_trip() -> None:
    ev = Event({"evt.type": "execve", "proc.name": "sh", "proc.aname": ("runc",), "proc.tty": 1,
                "proc.is_tty": True})
    back = event_from_record(json.loads(ev.to_json()))
    assert back.fields == {k: v for k, v in ev.fields.items() if v is not None}
    assert back.fields["proc.aname"] == ("runc",)
    with pytest.raises(EventFormatError, match="unknown field"):
        event_from_record({"evt.type": "execve", "proc.nam": "x"})
    with pytest.raises(EventFormatError, match="expected an integer"):
        event_from_record({"evt.type": "execve", "proc.tty": "1"})
    with pytest.raises(EventFormatError, match=r"no evt\.type"):
        event_from_record({"proc.name": "x"})
    with pytest.raises(EventFormatError):
        event_from_record(["not", "an", "object"])


def test_journal_record_of_a_match() -> None:
    rs = load_rules([], include_default=True)
    ev = Event({"evt.type": "execve", "evt.source": "proc", "proc.name": "xmrig", "proc.exe": "/srv/x\nmrig",
                "proc.cmdline": "xmrig \x1b[31m-o stratum+tcp://p:1", "container.id": CID,
                "container.name": "web", "container.image": "app:1", "proc.pid": 5, "user.name": "root"})
    [m] = [m for m in rs.evaluate(ev) if m.name == "Crypto miner"]
    rec = build_record(m, ["Process killed"])
    assert rec.module == Module.BEHAVIOUR.value
    assert rec.object == f"docker://app:1@{CID}/srv/x\\x0amrig"
    assert rec.detection == "Crypto miner" and rec.action == "Process killed"
    assert rec.container_id == CID and rec.container_name == "web" and rec.image == "app:1"
    assert "\x1b" not in rec.info and "\\x1b[31m" in rec.info and rec.level == "Error"


class Meta:
    def __init__(self, upper: str) -> None:
        self.info = ContainerInfo(CID, "web", "app:1", "sha256:x", "/m", upper, 0, True)

    def get(self, container_id: str) -> ContainerInfo | None:
        return self.info if container_id == CID else None


def test_exec_gate_denies_high_confidence_rules_by_default(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "dropped").write_text("x")
    records: list[DetectionRecord] = []
    rs = load_rules([], include_default=True)
    enricher = Enricher(Meta(str(tmp_path)))
    gate = ExecGate(lambda: rs, enricher, Responder(lambda f: records.append(f()) if f() else None))
    assert gate.should_deny(999_999_999, "/srv/dropped", CID) is None  # drift: recorded, not denied
    assert gate.should_deny(999_999_999, b"/tmp/x", CID) is None
    assert gate.should_deny(999_999_999, "/bin/busybox", CID) is None
    assert gate.should_deny(999_999_999, "/usr/bin/xmrig", CID) is not None  # a miner, by name
    # drift and /tmp are recorded by the gate (it alone sees a script's path), not denied
    assert [(r.detection, r.action) for r in records] == [
        ("Drift - binary not from the image executed", "Retained"),
        ("Execution from /tmp or /dev/shm", "Retained"), ("Crypto miner", "Blocked")]


def test_exec_gate_denies_drift_and_tmp_when_asked(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "dropped").write_text("x")
    site = tmp_path / "site.yaml"
    site.write_text("- rule: Drift - binary not from the image executed\n  response: [record, deny]\n"
                    "- rule: Execution from /tmp or /dev/shm\n  response: [record, deny]\n")
    records: list[DetectionRecord] = []
    rs = load_rules([site], include_default=True)
    enricher = Enricher(Meta(str(tmp_path)))
    gate = ExecGate(lambda: rs, enricher, Responder(lambda f: records.append(f()) if f() else None))
    match = gate.should_deny(999_999_999, "/srv/dropped", CID)
    assert isinstance(match, RuleMatch) and match.name.startswith("Drift")
    assert gate.should_deny(999_999_999, b"/tmp/x", CID) is not None
    assert gate.should_deny(999_999_999, "/bin/busybox", CID) is None
    assert gate.should_deny(999_999_999, "/tmp/x", "") is None  # host processes: no container rule
    assert [r.action for r in records] == ["Blocked", "Blocked"]


def test_rules_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "r.yaml"
    good.write_text("- rule: Mine\n  condition: evt.type = execve and proc.name = evil\n  priority: ERROR\n")
    res = runner.invoke(app, ["rules", "check", str(good)])
    assert res.exit_code == 0 and "OK: 1 rule(s)" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: Mine\n  condition: evt.type = execve and proc.nmae = evil\n")
    res = runner.invoke(app, ["rules", "check", str(bad)])
    assert res.exit_code != 0
    assert f"{bad}:2:36: unknown field 'proc.nmae'" in str(res.exception)
    events = tmp_path / "e.jsonl"
    events.write_text('{"evt.type": "execve", "proc.name": "evil"}\n# comment\n'
                      '{"evt.type": "execve", "proc.name": "good"}\n')
    res = runner.invoke(app, ["rules", "test", "--events", str(events), "--rules", str(good), "--no-default"])
    assert res.exit_code == 0, res.output
    assert f"{events}:1: Mine [ERROR]" in res.output and "2 event(s), 1 match(es)" in res.output
    events.write_text('{"evt.type": "execve"}\n{"evt.type": 3\n')
    res = runner.invoke(app, ["rules", "test", "--events", str(events), "--rules", str(good)])
    assert res.exit_code != 0 and f"{events}:2:" in str(res.exception)
    res = runner.invoke(app, ["rules", "list", "--rules", str(good), "--no-default"])
    assert res.exit_code == 0 and "Mine" in res.output


def test_reload_keeps_last_good_rules(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text("- rule: A\n  condition: evt.type = execve and proc.name = a\n")
    records: list[DetectionRecord | None] = []
    svc = BehaviorService(ServiceOptions(default_rules=False, rules_files=(str(rules),)),
                          lambda f: records.append(f()))
    assert [r.name for r in svc.rules.rules] == ["A"]
    rules.write_text("- rule: B\n  condition: evt.type = execve and proc.nme = b\n")
    error = svc.reload()
    assert error is not None and ":2:" in error
    assert [r.name for r in svc.rules.rules] == ["A"]
    assert records and records[-1] is not None and "last good rule set kept" in records[-1].detection
    rules.write_text("- rule: B\n  condition: evt.type = execve and proc.name = b\n")
    assert svc.reload() is None and [r.name for r in svc.rules.rules] == ["B"]


def test_response_overrides_from_config() -> None:
    opts = ServiceOptions(responses={"Crypto miner": ["record"], "Terminal shell in container": "record,kill"})
    svc = BehaviorService(opts, lambda f: None)
    assert svc.rules.get("Crypto miner").responses == ("record",)  # type: ignore[union-attr]
    assert svc.rules.get("Terminal shell in container").responses == ("record", "kill")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown rule"):
        BehaviorService(ServiceOptions(responses={"Nope": ["record"]}), lambda f: None)


def test_single_rules_text_has_no_default() -> None:
    assert load_rules_text("").rules == ()
