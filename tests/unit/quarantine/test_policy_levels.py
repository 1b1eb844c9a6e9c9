"""Remediation levels (always / safe / never) and the per-scope vetoes, as remediate() applies them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hullguard.agent.config import ConfigError, parse_config
from hullguard.engine.verdict import Detection, Verdict
from hullguard.objects.hostfs import RootedFile
from hullguard.objects.scanobject import ObjectContext, ScanObject, Scope
from hullguard.objects.uri import ObjectURI
from hullguard.response.actions import Action
from hullguard.response.policy import PolicyConfig, RemediationLevel, Remedy, decide
from hullguard.response.remediate import IMAGE_LAYER, PRIVATE_NAMESPACE, remediate

DET = Detection("Eicar-Test-Signature", "Teststring")
WHOLE = Verdict.detected(DET, "ABC")
MEMBER = Verdict.detected(DET, "ABC", inner=("inner/eicar.com",))


def _file(tmp_path: Path, name: str = "bad.zip") -> tuple[Path, RootedFile]:
    f = tmp_path / name
    f.write_bytes(b"x")
    st = os.lstat(f)
    return f, RootedFile(os.fsencode(tmp_path), os.fsencode(name), st.st_dev, st.st_ino)


def _obj(f: Path, scope: Scope) -> ScanObject:
    return ScanObject(ObjectURI.file(str(f)), context=ObjectContext(scope))


@pytest.mark.parametrize("scope", [Scope.HOST, Scope.VOLUME, Scope.CONTAINER_LAYER])
def test_levels(tmp_path: Path, scope: Scope) -> None:
    f, loc = _file(tmp_path)
    never = remediate(_obj(f, scope), WHOLE, Remedy.CLEAN, location=loc, level=RemediationLevel.NEVER)
    assert never.action is Action.RETAINED and "never" in never.detail and f.exists()
    safe = remediate(_obj(f, scope), MEMBER, Remedy.CLEAN, location=loc, level=RemediationLevel.SAFE)
    assert safe.action is Action.RETAINED and "inside an archive" in safe.detail and f.exists()
    always = remediate(_obj(f, scope), MEMBER, Remedy.CLEAN, location=loc, level=RemediationLevel.ALWAYS)
    assert always.action is Action.CLEANED_BY_DELETING and not f.exists()
    g, gloc = _file(tmp_path, "plain.com")  # safe: a file that is the threat itself goes
    safe_whole = remediate(_obj(g, scope), WHOLE, Remedy.CLEAN, location=gloc, level=RemediationLevel.SAFE)
    assert safe_whole.action is Action.CLEANED_BY_DELETING and not g.exists()


def test_private_namespace_and_image_layers_are_never_touched(tmp_path: Path) -> None:
    f, loc = _file(tmp_path, "e.com")
    for remedy in (Remedy.CLEAN, Remedy.QUARANTINE):
        private = remediate(_obj(f, Scope.CONTAINER_PRIVATE), WHOLE, remedy, location=loc)
        assert (private.action, private.detail) == (Action.RETAINED, PRIVATE_NAMESPACE)
        image = remediate(_obj(f, Scope.IMAGE), WHOLE, remedy, location=loc)
        assert (image.action, image.detail) == (Action.RETAINED, IMAGE_LAYER)
    assert f.exists()


def test_never_level_turns_every_removing_remedy_into_retain() -> None:
    p = PolicyConfig(host=Remedy.QUARANTINE, volume=Remedy.CLEAN, level=RemediationLevel.NEVER)
    assert decide(Scope.HOST, p) is Remedy.RETAIN and decide(Scope.VOLUME, p) is Remedy.RETAIN
    assert decide(Scope.HTTP, p) is Remedy.BLOCK  # not a removal


def test_config_keys_per_scope_and_level() -> None:
    cfg = parse_config({"response": {"host": "quarantine", "container": "clean", "volume": "retain",
                                      "image": "report", "level": "safe"}})
    r = cfg.response
    assert (r.host, r.container, r.volume, r.image, r.level) == (
        Remedy.QUARANTINE, Remedy.CLEAN, Remedy.RETAIN, Remedy.REPORT, RemediationLevel.SAFE)
    with pytest.raises(ConfigError, match=r"response\.level"):
        parse_config({"response": {"level": "sometimes"}})
