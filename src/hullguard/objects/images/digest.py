"""Content digests: validating the ``sha256:HEX`` names images use, and hashing while reading.

Every blob an image names is checked against its digest as it is streamed; a store that
hands back other bytes than the manifest promised is reported, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Protocol

_DIGEST_RE = re.compile(r"^(?P<algo>sha256|sha512):(?P<hex>[0-9a-f]+)$")
_HEX_LEN = {"sha256": 64, "sha512": 128}


class DigestError(ValueError):
    """A digest string that is not ``sha256:<64 hex>`` (or sha512)."""


def check_digest(text: str) -> str:
    """Return ``text`` if it is a well-formed digest; used before a digest becomes a file name."""
    m = _DIGEST_RE.match(text)
    if not m or len(m.group("hex")) != _HEX_LEN[m.group("algo")]:
        raise DigestError(f"not a valid content digest: {text[:100]!r}")
    return text


def digest_parts(text: str) -> tuple[str, str]:
    algo, _, hexpart = check_digest(text).partition(":")
    return algo, hexpart


def short(digest: str, n: int = 12) -> str:
    return digest.partition(":")[2][:n] or digest[:n]


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class HashingReader(io.RawIOBase):
    """Passes bytes through from ``src`` and hashes them; ``digest`` is valid after EOF.

    ``drain()`` reads to the end so the digest covers trailing bytes a consumer (tarfile)
    did not need, such as the end-of-archive blocks.
    """

    def __init__(self, src: Readable, algo: str = "sha256") -> None:
        super().__init__()
        self._src = src
        self._algo = algo
        self._hash = hashlib.new(algo)
        self.count = 0
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._src.read(len(buffer))
        n = len(data)
        if n == 0:
            self.eof = True
            return 0
        buffer[:n] = data
        self._hash.update(data)
        self.count += n
        return n

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            chunks: list[bytes] = []
            while True:
                chunk = self.read(1 << 20)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        data = self._src.read(size)
        if not data:
            self.eof = True
            return b""
        self._hash.update(data)
        self.count += len(data)
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        while self.read(chunk):
            pass

    @property
    def digest(self) -> str:
        return f"{self._algo}:{self._hash.hexdigest()}"


def hash_stream(src: Readable, algo: str = "sha256", chunk: int = 1 << 20) -> tuple[str, int]:
    """Digest and length of everything left in ``src``."""
    h = hashlib.new(algo)
    n = 0
    while True:
        data = src.read(chunk)
        if not data:
            return f"{algo}:{h.hexdigest()}", n
        h.update(data)
        n += len(data)
