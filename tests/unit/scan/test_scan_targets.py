"""Target strings: paths resolved once, prefixes through the registry, clear errors otherwise."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hullguard.objects import targets as targets_mod
from hullguard.objects.scanobject import Scope
from hullguard.objects.targets import (
    TargetError,
    TreeTarget,
    register_source,
    resolve_target,
    resolve_targets,
)
from hullguard.objects.uri import ObjectURI


def test_directory_and_file_targets(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (t,) = resolve_target(str(tmp_path))
    assert (t.root, t.start) == (os.fsencode(tmp_path), b"")
    assert t.context.scope is Scope.HOST
    (f,) = resolve_target(str(tmp_path / "f"))
    assert (f.root, f.start) == (os.fsencode(tmp_path), b"f")
    assert str(f.uri_for(b"f")) == f"file://{tmp_path}/f"


def test_symlink_target_resolved_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (t,) = resolve_target(str(tmp_path / "link"))
    assert t.root == os.fsencode(tmp_path / "real")


def test_root_uri() -> None:
    (t,) = resolve_target("/")
    assert str(t.uri_for(b"etc/passwd")) == "file:///etc/passwd"
    assert str(t.uri_for(b"")) == "file:///"


def test_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TargetError, match="no such file"):
        resolve_target(str(tmp_path / "missing"))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(TargetError, match="dangling"):
        resolve_target(str(tmp_path / "dangling"))
    monkeypatch.delitem(targets_mod._SOURCES, "container", raising=False)  # registered by objects.containers
    with pytest.raises(TargetError, match="not available"):
        resolve_target("container:web")
    with pytest.raises(TargetError, match="unknown target type 'bogus:'"):
        resolve_target("bogus:thing")
    with pytest.raises(TargetError, match="nothing to scan"):
        resolve_targets([])


def test_existing_path_with_colon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd:name").write_text("x")
    (t,) = resolve_target("odd:name")
    assert t.start == b"odd:name"


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(targets_mod._SOURCES)
    yield
    targets_mod._SOURCES.clear()
    targets_mod._SOURCES.update(saved)


def test_registered_source(clean_registry: None) -> None:
    def resolver(ref: str) -> list[TreeTarget]:
        return [TreeTarget(f"demo:{ref}", b"/", uri_base=ObjectURI.docker("img", "a" * 12, ""),
                           path_prefix=b"/")]

    register_source("demo", resolver, "demo:REF")
    (t,) = resolve_target("demo:x")
    assert t.text == "demo:x"
    assert str(t.uri_for(b"etc/x")) == f"docker://img@{'a' * 12}/etc/x"
    with pytest.raises(TargetError, match="demo:REF"):
        resolve_target("demo:")
