"""Layer blobs as uncompressed tar streams: gzip, zstd, bzip2 and xz, chosen by media type or magic.

Decompression is streamed (one chunk at a time); the caller hashes the output to get the
layer's ``diff_id``. The magic bytes decide when the media type is missing or generic
(Docker's legacy ``layer.tar``, OCI ``...tar`` that is in fact compressed).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from typing import Any

from hullguard.objects.images.digest import Readable

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"


class UnsupportedCompression(ValueError):
    pass


class Peeked:
    """A stream whose first bytes were already read to look at the magic."""

    def __init__(self, prefix: bytes, rest: Readable) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, n: int = -1, /) -> bytes:
        if self._prefix:
            if n is None or n < 0:
                data, self._prefix = self._prefix + self._rest.read(), b""
                return data
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return self._rest.read(n)


class _ZstdErrors:
    """zstandard raises its own error type; the walker treats damaged data as OSError."""

    def __init__(self, reader: Any, error: type[Exception]) -> None:
        self._reader = reader
        self._error = error

    def read(self, n: int = -1, /) -> bytes:
        try:
            data: bytes = self._reader.read(n)
        except self._error as exc:
            raise OSError(f"zstd: {exc}") from None
        return data


def sniff(prefix: bytes) -> str:
    if prefix.startswith(GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(ZSTD_MAGIC):
        return "zstd"
    if prefix.startswith(BZIP2_MAGIC):
        return "bzip2"
    if prefix.startswith(XZ_MAGIC):
        return "xz"
    return "tar"


def peek(src: Readable) -> tuple[str, Readable]:
    """The compression of ``src`` (``tar`` for none) and a stream that still starts at byte 0."""
    prefix = b""
    while len(prefix) < 6:
        chunk = src.read(6 - len(prefix))
        if not chunk:
            break
        prefix += chunk
    return sniff(prefix), Peeked(prefix, src)


def decompressed(src: Readable) -> tuple[Readable, str]:
    """The uncompressed stream of ``src`` and the compression found (``tar`` for none)."""
    kind, stream = peek(src)
    return open_as(stream, kind), kind


def open_as(stream: Readable, kind: str) -> Readable:
    """``stream`` decompressed as ``kind`` (see :func:`sniff`)."""
    raw: Any = stream  # the library readers want a file object; ours has read()
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if kind == "zstd":
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover - zstandard is a dependency
            raise UnsupportedCompression("zstd layer: the zstandard module is not installed") from exc
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return _ZstdErrors(reader, zstandard.ZstdError)
    return stream
