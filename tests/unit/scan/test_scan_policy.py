"""Policy per scope, the on-demand overrides, the config section, and remediation dispatch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hullguard.agent.config import ConfigError, parse_config
from hullguard.engine.verdict import Detection, Verdict
from hullguard.objects.hostfs import RootedFile
from hullguard.objects.scanobject import ScanObject, Scope
from hullguard.objects.uri import ObjectURI
from hullguard.response import remediate as remediate_mod
from hullguard.response.actions import Action
from hullguard.response.policy import PolicyConfig, Remedy, decide
from hullguard.response.remediate import Remediation, remediate

VERDICT = Verdict.detected(Detection("Eicar-Test-Signature", "Teststring"), "ABC")


def test_defaults_per_scope() -> None:
    p = PolicyConfig()
    assert decide(Scope.HOST, p) is Remedy.CLEAN
    assert decide(Scope.CONTAINER_LAYER, p) is Remedy.RETAIN
    assert decide(Scope.VOLUME, p) is Remedy.CLEAN
    assert decide(Scope.CONTAINER_PRIVATE, p) is Remedy.RETAIN
    assert decide(Scope.IMAGE, p) is Remedy.REPORT
    assert decide(Scope.HTTP, p) is Remedy.BLOCK


def test_on_demand_changes_nothing_unless_asked() -> None:
    p = PolicyConfig(volume=Remedy.QUARANTINE).on_demand(clean=False)
    assert {decide(s, p) for s in Scope} <= {Remedy.RETAIN, Remedy.REPORT, Remedy.BLOCK}
    assert decide(Scope.HOST, PolicyConfig(host=Remedy.RETAIN).on_demand(clean=True)) is Remedy.CLEAN


def test_config_section() -> None:
    cfg = parse_config({"response": {"host": "quarantine", "image": "report"}})
    assert cfg.response.host is Remedy.QUARANTINE
    with pytest.raises(ConfigError, match=r"response\.host"):
        parse_config({"response": {"host": "nuke"}})
    with pytest.raises(ConfigError, match=r"response\.bogus"):
        parse_config({"response": {"bogus": "clean"}})


def _obj(path: Path) -> ScanObject:
    return ScanObject(ObjectURI.file(str(path)))


def test_remediate_clean_deletes_via_root(tmp_path: Path) -> None:
    f = tmp_path / "bad"
    f.write_text("x")
    st = os.lstat(f)
    loc = RootedFile(os.fsencode(tmp_path), b"bad", st.st_dev, st.st_ino)
    result = remediate(_obj(f), VERDICT, Remedy.CLEAN, location=loc)
    assert result.action is Action.CLEANED_BY_DELETING
    assert not f.exists()


def test_remediate_without_location_or_handler_retains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "bad"
    f.write_text("x")
    assert remediate(_obj(f), VERDICT, Remedy.CLEAN).action is Action.RETAINED
    assert remediate(_obj(f), VERDICT, Remedy.RETAIN).action is Action.RETAINED
    monkeypatch.delitem(remediate_mod._HANDLERS, Remedy.QUARANTINE, raising=False)
    q = remediate(_obj(f), VERDICT, Remedy.QUARANTINE)
    assert q.action is Action.RETAINED and "quarantine" in q.detail
    assert f.exists()


def test_registered_handler_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ScanObject] = []

    def quarantine(obj: ScanObject, verdict: Verdict, loc: RootedFile | None) -> Remediation:
        seen.append(obj)
        return Remediation(Action.QUARANTINED)

    monkeypatch.setitem(remediate_mod._HANDLERS, Remedy.QUARANTINE, quarantine)
    obj = _obj(tmp_path / "x")
    assert remediate(obj, VERDICT, Remedy.QUARANTINE).action is Action.QUARANTINED
    assert seen == [obj]
