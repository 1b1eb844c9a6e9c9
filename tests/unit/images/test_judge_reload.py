"""A signature reload swaps the image judge's engine; the old one can go on any thread.

yara-x scanners must be freed by the thread that made them; the engine keeps them in a
thread-local table (engine/yararules.py), so an engine the agent drops on its main thread
(SIGHUP) while the image scan thread lives leaves no "dropped on another thread" leak.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import pytest

from hullguard.agent.imagegate import ImageJudge
from hullguard.engine.engine import Engine
from hullguard.engine.holder import EngineHolder
from hullguard.objects.layercache import LayerCache


def test_reload_while_the_scan_thread_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    holder = EngineHolder(Engine.load())
    cache = LayerCache.open(tmp_path / "layers.db")
    judge = ImageJudge(lambda: holder.engine, cache, lambda: None)
    try:
        # a scan on the judge's thread gives the engine a yara-x scanner owned by that thread
        assert judge._pool.submit(lambda: holder.engine.scan_bytes(b"x" * 100)).result().verdicts == ()
        holder.reload(Engine.load())  # the old engine's last reference goes away on this thread
        gc.collect()
        assert judge._pool.submit(lambda: holder.engine.scan_bytes(b"y" * 100)).result().verdicts == ()
        assert not unraisable, [str(u.exc_value) for u in unraisable]
    finally:
        judge.close()
        cache.close()


def test_agent_image_services_reload_keeps_the_old_set_when_the_new_one_is_bad(tmp_path: Path) -> None:
    from hullguard.agent.config import parse_config
    from hullguard.agent.imagewatch import ImageServices

    sigs = tmp_path / "sigs"
    sigs.mkdir()
    cfg = parse_config({"state_dir": str(tmp_path / "state"), "engine": {"signature_dirs": [str(sigs)]},
                        "images": {"gate": "off"}})
    services = ImageServices(cfg, lambda factory: None)
    first = services.current().db_version
    (sigs / "bad.hdb").write_text("not a signature line\n")
    why = services.reload()
    assert why and "bad.hdb" in why
    assert services.current().db_version == first
    (sigs / "bad.hdb").write_text(f"{'0' * 32}:5:Hullguard.Test.Reload\n")
    assert services.reload() == ""
    assert services.current().db_version != first
