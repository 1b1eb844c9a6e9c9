"""Builders for crafted samples used by the engine tests (importable as ``engine_samples``).

Every sample is assembled at run time from fragments, so no file in the repository
contains a complete test signature (other scanners would flag the repo).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterable

EICAR_PARTS = ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-ANTIVIRUS-", "TEST-FILE!$H+H*"]


def make_eicar() -> bytes:
    return "".join(EICAR_PARTS).encode()


def tar_bytes(files: Iterable[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(files: Iterable[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in files:
            zf.writestr(name, data)
    return buf.getvalue()
