"""Walking one image layer (a tar stream) and scanning every regular file in it, in memory.

Nothing is ever extracted: each member's bytes go from the tar stream straight to the
engine. While walking we record what later layers need to decide whether a finding is
still visible in the final filesystem: whiteouts (``.wh.NAME``), opaque directories
(``.wh..wh..opq``), and a hash of every path the layer writes (a later file or symlink on
the same path, or on a parent directory, replaces it).

Hostile layers are reported, not obeyed: absolute names and ``..`` are scanned under the
path they would land on in a container (Docker clamps them the same way or refuses the
layer), hard links out of the root are noted and never followed, device nodes are noted,
and a corrupt or truncated tar ends the layer with a ``corrupt or truncated`` outcome.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
import zlib
from array import array
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, cast

from hullguard.engine.verdict import NotScannedReason, ScanOutcome, Verdict, VerdictKind
from hullguard.objects.images.digest import HashingReader, Readable
from hullguard.objects.uri import escape_text

OPAQUE = ".wh..wh..opq"
WH_PREFIX = ".wh."
WH_META_PREFIX = ".wh..wh."
HEAD_BYTES = 1 << 20
"""The first MiB of a layer tar identifies it cheaply before it has been read to the end."""
TAR_BUFSIZE = 65536
MAX_ANOMALIES = 200
"""Anomalies kept per layer; the count beyond is still reported."""


class StreamScanner(Protocol):
    """What the layer walker needs from the engine (:class:`hullguard.engine.engine.Engine`)."""

    @property
    def version(self) -> str: ...

    @property
    def db_version(self) -> str: ...

    def scan_stream(self, stream: BinaryIO, size: int | None = None) -> ScanOutcome: ...


def path_key(path: str) -> int:
    """A compact key for a path: 64 bits of BLAKE2b (collisions only ever make a finding 'visible')."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def normalize_entry(name: str) -> tuple[str, bool]:
    """The absolute path a tar entry lands on, and whether its name tried to leave the root."""
    escapes = name.startswith("/") or ".." in name.split("/")
    path = posixpath.normpath("/" + name)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path, escapes


@dataclass(frozen=True)
class PathVerdict:
    """One detection or not-scanned outcome for a file of the layer (``path`` is absolute)."""

    path: str
    verdict: Verdict


@dataclass
class LayerScan:
    """What one walk of a layer found; cached by ``diff_id`` (see ``objects.layercache``)."""

    diff_id: str = ""
    size: int = 0
    head: str = ""
    files: int = 0
    entries_count: int = 0
    scanned_bytes: int = 0
    verdicts: list[PathVerdict] = field(default_factory=list)
    whiteouts: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    entries: set[int] = field(default_factory=set)
    """path_key() of every path the layer writes (files, dirs, links)."""
    nondirs: set[int] = field(default_factory=set)
    """path_key() of the paths the layer writes as something other than a directory."""
    anomalies: list[str] = field(default_factory=list)
    anomaly_count: int = 0
    complete: bool = True
    """False when the tar was corrupt or cut short: the walk stopped and the layer is not cached."""

    @property
    def detections(self) -> list[PathVerdict]:
        return [pv for pv in self.verdicts if pv.verdict.kind is VerdictKind.DETECTED]

    def note(self, text: str) -> None:
        self.anomaly_count += 1
        if len(self.anomalies) < MAX_ANOMALIES:
            self.anomalies.append(text)

    def pack_keys(self) -> tuple[bytes, bytes]:
        return (array("Q", sorted(self.entries)).tobytes(), array("Q", sorted(self.nondirs)).tobytes())

    @staticmethod
    def unpack_keys(data: bytes) -> set[int]:
        arr = array("Q")
        arr.frombytes(data[: len(data) - len(data) % 8])
        return set(arr)


class _HeadCapture:
    """Keeps the first ``HEAD_BYTES`` read through it so the layer's head hash can be computed."""

    def __init__(self, src: Readable) -> None:
        self._src = src
        self._head = hashlib.sha256()
        self._seen = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        if self._seen < HEAD_BYTES and data:
            take = data[: HEAD_BYTES - self._seen]
            self._head.update(take)
            self._seen += len(take)
        return data

    @property
    def head(self) -> str:
        return "sha256:" + self._head.hexdigest()


READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)
"""What a damaged layer raises while it is read (gzip/zstd/lzma errors are OSError/ValueError)."""


def walk_layer(src: Readable, scanner: StreamScanner, *, label: str = "layer") -> LayerScan:
    """Scan every regular file of the uncompressed layer tar ``src``; never raises for bad data."""
    head = _HeadCapture(src)
    hashing = HashingReader(head)
    scan = LayerScan()
    regular: dict[str, int] = {}  # path -> index of its first verdict (or -1), for hard links
    try:
        with tarfile.open(fileobj=hashing, mode="r|", bufsize=TAR_BUFSIZE) as tar:
            for member in tar:
                _walk_member(tar, member, scan, regular, scanner)
        hashing.drain()
    except READ_ERRORS as exc:
        scan.complete = False
        where = f" after {scan.entries_count} entries" if scan.entries_count else ""
        scan.verdicts.append(PathVerdict("/", Verdict.not_scanned(
            NotScannedReason.CORRUPT, f"{label}: tar stream is corrupt or truncated{where}: "
            f"{escape_text(str(exc)) or type(exc).__name__}")))
    scan.diff_id = hashing.digest
    scan.size = hashing.count
    scan.head = head.head
    return scan


def _walk_member(tar: tarfile.TarFile, member: tarfile.TarInfo, scan: LayerScan,
                 regular: dict[str, int], scanner: StreamScanner) -> None:
    scan.entries_count += 1
    path, escapes = normalize_entry(member.name)
    if escapes:
        scan.note(f"entry name {escape_text(member.name)!r} is absolute or contains '..'; "
                  f"treated as {escape_text(path)}")
    base = posixpath.basename(path)
    parent = posixpath.dirname(path)
    if base.startswith(WH_PREFIX):
        if base == OPAQUE:
            scan.opaque.append(parent)
        elif not base.startswith(WH_META_PREFIX):
            scan.whiteouts.append(posixpath.join(parent, base[len(WH_PREFIX):]))
        return
    if path == "/":
        return
    key = path_key(path)
    scan.entries.add(key)
    if not member.isdir():
        scan.nondirs.add(key)
    if member.isreg():
        _scan_regular(tar, member, path, scan, regular, scanner)
    elif member.islnk():
        _hard_link(member, path, scan, regular)
    elif member.ischr() or member.isblk():
        kind = "character" if member.ischr() else "block"
        scan.note(f"{kind} device node {escape_text(path)} ({member.devmajor},{member.devminor}); not scanned")


def _scan_regular(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, scan: LayerScan,
                  regular: dict[str, int], scanner: StreamScanner) -> None:
    fileobj = tar.extractfile(member)
    if fileobj is None:  # not reachable for regular files; kept for the type checker
        return
    outcome = scanner.scan_stream(cast(BinaryIO, fileobj), member.size)
    scan.files += 1
    scan.scanned_bytes += outcome.scanned_bytes
    first = len(scan.verdicts)
    for verdict in outcome.verdicts:
        scan.verdicts.append(PathVerdict(path, verdict))
    regular[path] = first if outcome.verdicts else -1


def _hard_link(member: tarfile.TarInfo, path: str, scan: LayerScan, regular: dict[str, int]) -> None:
    target, escapes = normalize_entry(member.linkname)
    if escapes:
        scan.note(f"hard link {escape_text(path)} -> {escape_text(member.linkname)!r} points outside "
                  f"the layer root; not followed")
        return
    first = regular.get(target)
    if first is None or first < 0:
        return  # a clean file of this layer, or a file of a lower layer (scanned in its own layer)
    # The link is a second name for detected bytes: report it under both names.
    start = len(scan.verdicts)
    for pv in scan.verdicts[first:start]:
        if pv.path != target:
            break
        scan.verdicts.append(PathVerdict(path, pv.verdict))
    regular[path] = start
