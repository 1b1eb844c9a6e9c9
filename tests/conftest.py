"""Shared test helpers: the EICAR bytes are assembled at run time so no file in the repo holds them."""

from __future__ import annotations

import pytest

EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
EICAR_SHA1 = "3395856CE81F2B7382DEE72602F798B642F14140"


@pytest.fixture
def eicar() -> bytes:
    return EICAR
