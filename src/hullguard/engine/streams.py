"""Byte streams for the archive walker: reading an fd by offset, re-joining a peeked
prefix, bounded decompression, and accounting of unpacked bytes.

Everything is written against :class:`io.RawIOBase` so ``tarfile`` and ``zipfile`` can read
through it; no stream here ever holds more than one chunk of its own.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import zlib
from collections.abc import Callable
from typing import Protocol

from hullguard.engine.verdict import NotScannedReason

CHUNK = 256 * 1024
RATIO_MIN_BYTES = 1 << 20
"""The compression ratio is only judged after this much output: tiny all-zero files are
legitimately highly compressible, bombs are not tiny."""
XZ_MEMLIMIT = 256 * 1024 * 1024
"""xz declares its dictionary size in the header; refuse streams needing more memory."""


class LimitReached(Exception):
    """A scan limit was hit while reading ``source``; the owner of ``source`` reports it."""

    def __init__(self, reason: NotScannedReason, detail: str, source: object) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.source = source


class Budget:
    """Bytes unpacked from one top-level object, shared by every layer of it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.exhausted = False

    def charge(self, n: int, source: object) -> None:
        self.used += n
        if self.used > self.limit:
            self.exhausted = True
            raise LimitReached(
                NotScannedReason.TOTAL_SIZE_LIMIT,
                f"more than {self.limit} bytes unpacked from this object",
                source,
            )


class FdReader(io.RawIOBase):
    """A seekable view of a file descriptor read with ``pread``: the fd's own offset is
    never moved and the file is never reopened by path."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = os.preadv(self._fd, [buffer], self._pos)
        self._pos += n
        return n


class PrefixedReader(io.RawIOBase):
    """Bytes already peeked from ``rest`` followed by the rest of it (not seekable)."""

    def __init__(self, prefix: bytes, rest: io.RawIOBase | io.BufferedIOBase | _Readable) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        if not data:
            return 0
        n = len(data)
        buffer[:n] = data
        return n


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Decoder(Protocol):
    eof: bool

    def feed(self, data: bytes, max_length: int) -> bytes: ...
    def needs_input(self) -> bool: ...
    def leftover(self) -> bytes: ...


class _ZlibDecoder:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)  # gzip header and trailer (CRC, size) checked
        self._tail = b""
        self.eof = False

    def feed(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(self._tail + data, max_length)
        self._tail = self._d.unconsumed_tail
        self.eof = self._d.eof
        return out

    def needs_input(self) -> bool:
        return not self._tail

    def leftover(self) -> bytes:
        return self._d.unused_data


class _LibDecoder:
    """bz2 and lzma share the ``needs_input`` decompressor API."""

    def __init__(self, d: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self._d = d
        self.eof = False

    def feed(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(data, max_length)
        self.eof = self._d.eof
        return out

    def needs_input(self) -> bool:
        return self._d.needs_input

    def leftover(self) -> bytes:
        return self._d.unused_data


DECODERS: dict[str, tuple[bytes, Callable[[], _Decoder]]] = {
    "gzip": (b"\x1f\x8b", _ZlibDecoder),
    "bzip2": (b"BZh", lambda: _LibDecoder(bz2.BZ2Decompressor())),
    "xz": (b"\xfd7zXZ\x00", lambda: _LibDecoder(lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT))),
}


class DecompressReader(io.RawIOBase):
    """Bounded streaming decompression of gzip, bzip2 or xz, multi-member/stream aware.

    Every output byte is charged to the object's :class:`Budget`; the ratio of output to
    input consumed is checked continuously, so a bomb stops after about
    ``RATIO_MIN_BYTES`` of output instead of filling memory or disk (limits raise
    :class:`LimitReached`). Truncated or bad data ends the stream early and sets
    :attr:`error`, so the consumer still scans everything that was decodable and the owner
    reports the corruption afterwards.
    """

    def __init__(self, kind: str, src: _Readable, budget: Budget, max_ratio: float) -> None:
        super().__init__()
        self._magic, self._factory = DECODERS[kind]
        self.kind = kind
        self._src = src
        self._budget = budget
        self._max_ratio = max_ratio
        self._dec: _Decoder = self._factory()
        self._pending = b""
        self._done = False
        self.consumed = 0
        self.produced = 0
        self.error = ""

    def readable(self) -> bool:
        return True

    def _input(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        data = self._src.read(CHUNK)
        self.consumed += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = self._read(len(buffer))
        n = len(out)
        buffer[:n] = out
        return n

    def _read(self, size: int) -> bytes:
        size = max(1, min(size, CHUNK))
        while not self._done:
            if self._dec.eof:
                rest = self._dec.leftover() + self._pending
                self._pending = b""
                if not rest:
                    rest = self._input()
                if len(rest) < len(self._magic) and rest:
                    rest += self._input()
                if rest.startswith(self._magic):  # another member/stream follows
                    self._dec = self._factory()
                    self._pending = rest
                else:  # end, or trailing padding/garbage: ignored like gzip(1) does
                    self._done = True
                    return b""
            data = self._input() if self._dec.needs_input() else b""
            starved = not data and self._dec.needs_input()
            try:
                out = self._dec.feed(data, size)
            except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
                self._done = True
                self.error = f"invalid {self.kind} data: {exc}"
                return b""
            if starved and not out and not self._dec.eof:
                self._done = True
                self.error = f"{self.kind} data truncated"
                return b""
            if out:
                self._account(len(out))
                return out
        return b""

    def _account(self, n: int) -> None:
        self.produced += n
        self._budget.charge(n, self)
        if self.produced > RATIO_MIN_BYTES and self.produced > self._max_ratio * max(1, self.consumed):
            self._done = True
            raise LimitReached(
                NotScannedReason.RATIO_LIMIT,
                f"{self.kind}: {self.produced} bytes from {self.consumed} (ratio above {self._max_ratio:g})",
                self,
            )


class ChargedReader(io.RawIOBase):
    """Passes reads through, charges them to the budget and, for a compressed zip member,
    checks the ratio of output to its packed size."""

    def __init__(self, src: _Readable, budget: Budget, *, packed: int | None = None,
                 max_ratio: float = 0.0,
                 charge: bool = True) -> None:
        super().__init__()
        self._src = src
        self._budget = budget
        self._packed = packed
        self._max_ratio = max_ratio
        self._charge = charge
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._src.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.produced += n
        if self._charge:
            self._budget.charge(n, self)
        if self._packed is not None and self.produced > RATIO_MIN_BYTES:
            consumed = self._packed
            if self.produced > self._max_ratio * max(1, consumed):
                raise LimitReached(
                    NotScannedReason.RATIO_LIMIT,
                    f"{self.produced} bytes from {consumed} packed (ratio above {self._max_ratio:g})",
                    self,
                )
        return n


def read_up_to(src: _Readable, n: int, prefix: bytes = b"") -> bytes:
    """``prefix`` followed by what ``src`` gives until ``n`` more bytes or its end (``read``
    may return short).

    The parts are gathered in a ``BytesIO``, whose ``getvalue()`` hands over its buffer
    without copying: joining a list of parts held every file twice at the end, which made a
    100 MB member of an image layer cost 200 MB (300 MB over the limit) of peak memory.
    """
    first = src.read(min(CHUNK * 4, n)) if n > 0 else b""
    if len(first) >= n or not first:
        return prefix + first if prefix else first
    buf = io.BytesIO()
    buf.write(prefix)
    buf.write(first)
    got = len(first)
    while got < n:
        chunk = src.read(min(CHUNK * 4, n - got))
        if not chunk:
            break
        buf.write(chunk)
        got += len(chunk)
    return buf.getvalue()
