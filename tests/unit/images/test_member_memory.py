"""Peak memory per layer member: one copy of the file (at most the size limit), never two.

An image layer's files reach the engine as tar member streams (Engine.scan_stream). The
issue's target is under 300 MB for a multi-gigabyte image with the 100 MB file limit, so a
member may be held once; before, the read was joined from parts (twice) and a member over
the limit was read again and sliced (three times). tracemalloc sees every bytes object and
BytesIO buffer the scan makes.
"""

from __future__ import annotations

import io
import os
import tracemalloc

import pytest

from hullguard.engine.engine import Engine
from hullguard.engine.limits import ScanLimits
from hullguard.engine.verdict import VerdictKind

LIMIT = 8 << 20


class Stream(io.RawIOBase):
    """``n`` pseudo-random bytes, made as they are read (the test itself holds none of them)."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.block = os.urandom(1 << 16)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        k = min(len(b), self.left, len(self.block))
        b[:k] = self.block[:k]
        self.left -= k
        return k


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(limits=ScanLimits(max_file_size=LIMIT))


@pytest.mark.parametrize("size", [LIMIT - 1000, LIMIT, 5 * LIMIT])
def test_a_member_is_held_once(engine: Engine, size: int) -> None:
    tracemalloc.start()
    try:
        out = engine.scan_stream(io.BufferedReader(Stream(size), 1 << 16), size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = min(size, LIMIT)
    assert peak < 1.3 * held, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB member"
    kinds = {v.kind for v in out.verdicts}
    assert kinds == ({VerdictKind.NOT_SCANNED} if size > LIMIT else set())
    assert out.scanned_bytes == held


def test_over_the_limit_archive_is_still_unpacked(engine: Engine) -> None:
    """The no-second-copy path keeps unpacking a large gzip member as a stream."""
    import tarfile

    from imagebuild import EICAR

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in (("big.bin", os.urandom(LIMIT // 2)), ("big2.bin", os.urandom(LIMIT // 2)),
                           ("eicar.com", EICAR)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    assert len(blob) > LIMIT  # random bytes do not compress: the .tar.gz itself is over the limit
    out = engine.scan_stream(io.BytesIO(blob), len(blob))
    assert [v.inner for v in out.verdicts if v.kind is VerdictKind.DETECTED] == [("eicar.com",)], out.verdicts


def test_an_archive_over_the_limit_is_not_held_while_unpacked() -> None:
    """A .tar.gz member larger than the limit holding a file near the limit: one copy, not two.

    A larger limit here: decompression adds a few MiB of buffers whatever the limit is."""
    import tarfile

    limit = 4 * LIMIT
    engine = Engine.load(limits=ScanLimits(max_file_size=limit))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name in ("a.bin", "b.bin"):
            data = os.urandom(limit - 4096)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            del data
    blob = buf.getvalue()
    del buf
    assert len(blob) > limit
    tracemalloc.start()
    try:
        out = engine.scan_stream(io.BytesIO(blob), len(blob))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * limit, f"peak {peak / 2**20:.1f} MiB"
    assert not [v for v in out.verdicts if v.kind is not VerdictKind.CLEAN]
