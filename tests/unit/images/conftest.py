from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: the shared imagebuild helpers

from hullguard.engine.engine import Engine
from hullguard.objects.images.scanner import ImageScanner
from hullguard.objects.layercache import LayerCache


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine.load()


@pytest.fixture
def cache(tmp_path: Path) -> LayerCache:
    c = LayerCache.open(tmp_path / "cache" / "layers.db")
    yield c
    c.close()


@pytest.fixture
def scanner(engine: Engine, cache: LayerCache) -> ImageScanner:
    return ImageScanner(engine, cache)
