"""The scan engine: one loaded signature set, reused for every object.

``Engine.load`` reads hash signatures (``.hdb``/``.hsb``/``.hdu``/``.hsu``) and YARA
rules (``.yar``/``.yara``) from the signature directories plus the built-in set and
compiles all YARA sources once into one ``Rules`` object. Scanning never raises for a
single object: every failure is a ``NOT_SCANNED`` verdict.

Speed (see :mod:`hullguard.engine.yararules` for the measurements): each object is read
once with ``pread`` into one buffer that EICAR, hashes and YARA-X all use; hashing runs
only when a signature of that size exists; EICAR is a length check plus ``startswith``.
YARA-X holds the GIL, so parallel scans use processes: an ``Engine`` pickles as the
arguments to load it again (``__reduce__``), so a worker process builds its own.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hullguard import __version__
from hullguard.engine.archive import SNIFF_SIZE, sniff
from hullguard.engine.clamd import ClamdClient
from hullguard.engine.errors import SignatureError
from hullguard.engine.hashsigs import HASH_EXTENSIONS, HashDatabase
from hullguard.engine.limits import ScanLimits
from hullguard.engine.streams import CHUNK, FdReader, LimitReached, PrefixedReader, read_up_to
from hullguard.engine.verdict import NotScannedReason, ScanOutcome, Verdict
from hullguard.engine.walker import ObjectScan
from hullguard.engine.yararules import YARA_EXTENSIONS, YaraRules, YaraSource

if TYPE_CHECKING:
    from hullguard.agent.config import EngineConfig

ENGINE_VERSION = __version__
DEFAULT_LIMITS = ScanLimits()
BUILTIN_PACKAGE = "hullguard.engine"


def _yara_x_version() -> str:
    try:
        return metadata.version("yara-x")
    except metadata.PackageNotFoundError:  # pragma: no cover - installed as a dependency
        return "unknown"


@dataclass(frozen=True)
class SignatureFile:
    path: str
    kind: str
    """``hash`` or ``yara``."""
    text: str


def builtin_files() -> list[SignatureFile]:
    """The signature files shipped in ``hullguard/engine/builtin/``."""
    root = files(BUILTIN_PACKAGE).joinpath("builtin")
    out: list[SignatureFile] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        kind = _kind_of(entry.name)
        if kind:
            out.append(SignatureFile(f"builtin:{entry.name}", kind, entry.read_text(encoding="utf-8")))
    return out


def _kind_of(name: str) -> str:
    lower = name.lower()
    if lower.endswith(HASH_EXTENSIONS):
        return "hash"
    if lower.endswith(YARA_EXTENSIONS):
        return "yara"
    return ""


def read_signature_dir(path: str | Path) -> list[SignatureFile]:
    """Signature files directly in ``path`` (or ``path`` itself if it is a file), sorted by name.

    Files with other extensions are ignored, so a ClamAV database directory can be shared.
    """
    p = Path(path)
    if p.is_file():
        candidates = [p]
    elif p.is_dir():
        candidates = sorted(q for q in p.iterdir() if q.is_file())
    else:
        raise SignatureError(p, None, "signature directory not found")
    out: list[SignatureFile] = []
    for q in candidates:
        kind = _kind_of(q.name)
        if not kind:
            continue
        try:
            text = q.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SignatureError(q, None, f"not UTF-8 text: {exc.reason}") from exc
        except OSError as exc:
            raise SignatureError(q, None, f"cannot read: {exc.strerror}") from exc
        out.append(SignatureFile(str(q), kind, text))
    return out


def _fd_name(fd: int) -> str:
    """Base name of the file behind ``fd`` (for naming gzip content); readlink, not reopen."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
    if not target.startswith("/"):
        return ""
    return target.removesuffix(" (deleted)").rsplit("/", 1)[-1]


def _pread_all(fd: int, size: int) -> bytes:
    data = os.pread(fd, size, 0)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        chunk = os.pread(fd, size - got, got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _reload(args: dict[str, Any]) -> Engine:
    return Engine.load(**args)


class Engine:
    """A loaded signature set; thread-safe for scanning (per-thread YARA scanners)."""

    def __init__(self, *, hashdb: HashDatabase, yara: YaraRules, limits: ScanLimits, db_version: str,
                 clamd: ClamdClient | None, load_args: dict[str, Any], sources: Sequence[str]) -> None:
        self.hashdb = hashdb
        self.yara = yara
        self.limits = limits
        self.db_version = db_version
        self.clamd = clamd
        self.sources = tuple(sources)
        """Signature files loaded (``builtin:NAME`` for the built-in ones)."""
        self.version = f"hullguard-engine {ENGINE_VERSION} (yara-x {_yara_x_version()})"
        self._load_args = load_args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reload, (self._load_args,))

    @property
    def signature_count(self) -> int:
        return len(self.hashdb) + len(self.yara) + 1  # + EICAR

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        signature_dirs: Sequence[str | Path] = (),
        *,
        limits: ScanLimits = DEFAULT_LIMITS,
        builtin: bool = True,
        clamd_socket: str = "",
        clamd_timeout: float = 30.0,
    ) -> Engine:
        """Load and compile everything; raises :class:`SignatureError` (``file:line: ...``)."""
        sig_files: list[SignatureFile] = builtin_files() if builtin else []
        for d in signature_dirs:
            sig_files.extend(read_signature_dir(d))
        hashdb = HashDatabase()
        yara_sources: list[YaraSource] = []
        for i, sf in enumerate(sig_files):
            if sf.kind == "hash":
                hashdb.load_text(sf.text, sf.path)
            else:
                yara_sources.append(YaraSource(sf.path, sf.text, f"ns{i}"))
        yara = YaraRules.compile(yara_sources, limits.scan_timeout)
        digest = hashlib.sha256()
        digest.update(f"engine {ENGINE_VERSION} yara-x {_yara_x_version()} builtin {builtin}\n".encode())
        digest.update(f"{limits!r} clamd {bool(clamd_socket)}\n".encode())
        for content in sorted(hashlib.sha256(sf.text.encode()).hexdigest() + sf.kind for sf in sig_files):
            digest.update(content.encode())
        load_args: dict[str, Any] = {
            "signature_dirs": tuple(str(d) for d in signature_dirs),
            "limits": limits,
            "builtin": builtin,
            "clamd_socket": clamd_socket,
            "clamd_timeout": clamd_timeout,
        }
        return cls(
            hashdb=hashdb,
            yara=yara,
            limits=limits,
            db_version=digest.hexdigest()[:16],
            clamd=ClamdClient(clamd_socket, clamd_timeout) if clamd_socket else None,
            load_args=load_args,
            sources=[sf.path for sf in sig_files],
        )

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> Engine:
        return cls.load(
            cfg.signature_dirs,
            limits=cfg.limits,
            builtin=cfg.builtin_signatures,
            clamd_socket=cfg.clamd_socket,
            clamd_timeout=cfg.clamd_timeout,
        )

    # -- scanning --------------------------------------------------------------------------
    def _new(self, name: str) -> ObjectScan:
        return ObjectScan(self.limits, self.hashdb, self.yara, name)

    @staticmethod
    def _outcome(scan: ObjectScan) -> ScanOutcome:
        return ScanOutcome(tuple(scan.verdicts), scan.scanned_bytes)

    @staticmethod
    def _guard(scan: ObjectScan, exc: BaseException) -> None:
        if isinstance(exc, LimitReached):
            scan.not_scanned(exc.reason, exc.detail, ())
        elif isinstance(exc, MemoryError):
            scan.not_scanned(NotScannedReason.ERROR, "out of memory", ())
        elif isinstance(exc, OSError):
            scan.not_scanned(NotScannedReason.UNREADABLE, f"read error: {exc.strerror or exc}", ())
        else:
            scan.not_scanned(NotScannedReason.ERROR, f"engine error: {type(exc).__name__}: {exc}", ())

    def scan_fd(self, fd: int, size: int | None = None) -> ScanOutcome:
        """Scan the regular file open at ``fd`` (not closed, offset not moved, read only
        through ``fd``). ``size`` defaults to ``fstat``."""
        scan = self._new(_fd_name(fd))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return ScanOutcome((Verdict.not_scanned(NotScannedReason.NOT_REGULAR),), 0)
            if size is None:
                size = st.st_size
            maxf = self.limits.max_file_size
            if size <= maxf:
                scan.blob(_pread_all(fd, size), (), 0)
            else:
                read_at = lambda off, n: os.pread(fd, n, off)  # noqa: E731
                head = os.pread(fd, SNIFF_SIZE, 0)
                kind = sniff(head)
                if kind is not None:
                    scan.hash_whole(size, read_at)
                    src = io.BufferedReader(FdReader(fd, size), CHUNK)
                    scan.unpack(kind, src, (), 0, charged=False, raw_head=os.pread(fd, 4096, 0))
                else:
                    scan.leaf(os.pread(fd, maxf, 0), (), (size, read_at))
                    detail = f"only the first {maxf} of {size} bytes were scanned"
                    scan.not_scanned(NotScannedReason.TOO_LARGE, detail, ())
        except Exception as exc:
            self._guard(scan, exc)
        if self.clamd is not None:
            for v in self.clamd.scan_fd(fd):
                scan.add(v)
        return self._outcome(scan)

    def scan_bytes(self, data: bytes, *, name: str = "") -> ScanOutcome:
        """Scan in-memory ``data``; ``name`` (optional) names gzip content without a stored name."""
        scan = self._new(name)
        try:
            if len(data) <= self.limits.max_file_size:
                scan.blob(data, (), 0)
            else:
                scan.stream(io.BytesIO(data), len(data), (), 0)
        except Exception as exc:
            self._guard(scan, exc)
        if self.clamd is not None:
            for v in self.clamd.scan_bytes(data):
                scan.add(v)
        return self._outcome(scan)

    def scan_stream(self, stream: BinaryIO, size: int | None = None, *, name: str = "") -> ScanOutcome:
        """Scan a stream read once (e.g. a tar member of an image layer); not closed."""
        scan = self._new(name)
        maxf = self.limits.max_file_size
        data = b""
        complete = False
        try:
            if size is not None and size > maxf:
                # known to be over the limit (a tar member): an archive is unpacked as a stream
                # from its first bytes, anything else has its first maxf bytes scanned; holding
                # maxf bytes of an archive while unpacking it would double the peak memory
                scan.stream(stream, size, (), 0)
            else:
                data = read_up_to(stream, maxf)
                more = stream.read(1) if len(data) == maxf else b""
                complete = not more
                if complete:
                    scan.blob(data, (), 0)
                else:  # what was read is used, not read again: one copy of the first maxf bytes
                    scan.over_limit(data, PrefixedReader(more, stream), (), 0)
        except Exception as exc:
            self._guard(scan, exc)
        if self.clamd is not None:
            if complete:
                for v in self.clamd.scan_bytes(data):
                    scan.add(v)
            else:
                detail = f"clamd: stream larger than {maxf} bytes not sent"
                scan.not_scanned(NotScannedReason.TOO_LARGE, detail, ())
        return self._outcome(scan)
