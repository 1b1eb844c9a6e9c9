"""Fixtures for engine unit tests (builders live in ``engine_samples``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from engine_samples import make_eicar, tar_bytes, zip_bytes

from hullguard.engine.engine import Engine


@pytest.fixture(scope="session")
def eicar() -> bytes:
    return make_eicar()


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine.load()


@pytest.fixture()
def tar_of() -> Callable[..., bytes]:
    return tar_bytes


@pytest.fixture()
def zip_of() -> Callable[..., bytes]:
    return zip_bytes
