"""Hash signatures in ClamAV's ``.hdb``/``.hsb`` formats, so existing feeds load unchanged.

Line format: ``HASH:SIZE:NAME`` (optionally ``:MIN_FLEVEL``), ``SIZE`` may be ``*``; the hash
type follows from its hex length (32 md5, 40 sha1, 64 sha256). ``#`` comments and blank
lines are skipped.

Hashing is the expensive part, so the database is indexed by file size: a file is hashed
with an algorithm only when some signature of that algorithm has the file's size (or ``*``),
and all needed algorithms are fed in one pass over the bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hullguard.engine.errors import SignatureError
from hullguard.engine.verdict import Detection

HASH_EXTENSIONS = (".hdb", ".hsb", ".hdu", ".hsu")
_ALGO_BY_LEN = {32: "md5", 40: "sha1", 64: "sha256"}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class HashSignature:
    algo: str
    digest: str
    """Lower-case hex."""
    size: int | None
    """``None`` for ``*`` (any size)."""
    name: str
    source: str
    """``file:line`` the signature came from."""

    def detection(self, kind: str) -> Detection:
        return Detection(
            name=self.name,
            type="Malware",
            tags=Detection.make_tags(self.name, "Malware"),
            signature=f"{kind}:{self.source}",
        )


def parse_line(line: str, path: str, lineno: int) -> HashSignature | None:
    """One signature line, ``None`` for comments and blank lines; raises :class:`SignatureError`."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise SignatureError(path, lineno, "expected HASH:SIZE:NAME")
    digest, size_text, name = parts[0], parts[1], parts[2]
    if len(parts) == 4 and not parts[3].isdigit():
        raise SignatureError(path, lineno, f"invalid functionality level {parts[3]!r}")
    algo = _ALGO_BY_LEN.get(len(digest))
    if algo is None or not _HEX.match(digest):
        raise SignatureError(path, lineno, f"invalid hash {digest!r} (need 32, 40 or 64 hex digits)")
    size: int | None
    if size_text == "*":
        size = None
    elif size_text.isdigit():
        size = int(size_text)
    else:
        raise SignatureError(path, lineno, f"invalid size {size_text!r} (need a number or *)")
    if not name:
        raise SignatureError(path, lineno, "empty signature name")
    return HashSignature(algo, digest.lower(), size, name, f"{path}:{lineno}")


class HashDatabase:
    """All hash signatures of an engine, indexed by size then algorithm then digest."""

    def __init__(self) -> None:
        self._by_size: dict[int, dict[str, dict[str, HashSignature]]] = {}
        self._any_size: dict[str, dict[str, HashSignature]] = {}
        self._kinds: dict[str, str] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, sig: HashSignature, kind: str = "hsb") -> None:
        table = self._any_size if sig.size is None else self._by_size.setdefault(sig.size, {})
        table.setdefault(sig.algo, {}).setdefault(sig.digest, sig)
        self._kinds[sig.source] = kind
        self._count += 1

    def load_text(self, text: str, path: str) -> None:
        kind = Path(path).suffix.lstrip(".") or "hsb"
        for lineno, line in enumerate(text.splitlines(), start=1):
            sig = parse_line(line, path, lineno)
            if sig is not None:
                self.add(sig, kind)

    def algorithms_for(self, size: int) -> tuple[str, ...]:
        """Hash algorithms worth computing for a file of ``size`` bytes (often none)."""
        sized = self._by_size.get(size)
        if not sized and not self._any_size:
            return ()
        algos = set(self._any_size)
        if sized:
            algos.update(sized)
        return tuple(sorted(algos))

    def lookup(self, size: int, digests: dict[str, str]) -> list[Detection]:
        found: list[Detection] = []
        for algo, digest in digests.items():
            for table in (self._by_size.get(size, {}), self._any_size):
                sig = table.get(algo, {}).get(digest)
                if sig is not None:
                    found.append(sig.detection(self._kinds.get(sig.source, "hsb")))
        return found

    def match(self, data: bytes) -> tuple[list[Detection], dict[str, str]]:
        """Detections for in-memory ``data`` plus the digests computed (reusable for SHA-1)."""
        algos = self.algorithms_for(len(data))
        if not algos:
            return [], {}
        digests = hash_chunks(algos, _memory_chunks(data))
        return self.lookup(len(data), digests), digests

    def match_reader(
        self, size: int, read_at: Callable[[int, int], bytes]
    ) -> tuple[list[Detection], dict[str, str]]:
        """Like :meth:`match` for a file read in chunks by ``read_at(offset, n)`` (large files)."""
        algos = self.algorithms_for(size)
        if not algos:
            return [], {}
        return self.lookup(size, hash_chunks(algos, _reader_chunks(size, read_at))), {}


def hash_chunks(algos: Iterable[str], chunks: Iterable[bytes | memoryview]) -> dict[str, str]:
    """Feed every chunk to every hasher: one pass over the bytes for all algorithms."""
    hashers = {algo: hashlib.new(algo, usedforsecurity=False) for algo in algos}
    for chunk in chunks:
        for h in hashers.values():
            h.update(chunk)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


def _memory_chunks(data: bytes) -> Iterable[memoryview]:
    view = memoryview(data)
    if len(view) <= _CHUNK:
        yield view
        return
    for start in range(0, len(view), _CHUNK):
        yield view[start : start + _CHUNK]


def _reader_chunks(size: int, read_at: Callable[[int, int], bytes]) -> Iterable[bytes]:
    offset = 0
    while offset < size:
        chunk = read_at(offset, min(_CHUNK, size - offset))
        if not chunk:
            break
        offset += len(chunk)
        yield chunk
