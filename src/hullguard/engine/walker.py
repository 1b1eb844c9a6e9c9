"""One top-level object's scan: leaf checks on bytes, then archive unpacking with limits.

How bytes are held (memory bound): a file or member of at most ``max_file_size`` bytes is
read into memory once and every check (EICAR, hashes, YARA-X, which needs ``bytes``) runs
on that one buffer. Larger objects are not spilled to disk: if they are a streamable
archive (gzip, bzip2, xz, tar; zip only when seekable, i.e. a top-level fd) they are
unpacked as a stream without scanning their raw bytes, otherwise the first
``max_file_size`` bytes are scanned and a ``TOO_LARGE`` verdict says the rest was not.
Buffers held at once are bounded by the nesting depth and the per-object unpack budget.

Unpacking layers: each gzip/bzip2/xz/tar/zip layer is one nesting level. A compressed
tar (``.tar.gz``) is shown as its members directly (``a.tgz!/etc/x``, like ``tar tzf``);
any other compressed file shows its stored or suffix-stripped name (``a.gz!/a``).

Accounting of ``max_object_size``: every byte produced by decompression, plus member bytes
read from a container that is itself the top-level object. Bytes that merely pass through
a nested container were already counted when they were produced.

Archive members are only ever names: nothing is extracted to disk, so absolute names,
``..``, links and device entries cannot do anything.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hullguard.engine.archive import (
    COMPRESSED,
    SNIFF_SIZE,
    Kind,
    gzip_member_name,
    sniff,
    strip_suffix,
    zip_declared_entries,
)
from hullguard.engine.eicar import EICAR_DETECTION, is_eicar
from hullguard.engine.limits import ScanLimits
from hullguard.engine.streams import (
    CHUNK,
    RATIO_MIN_BYTES,
    Budget,
    ChargedReader,
    DecompressReader,
    LimitReached,
    PrefixedReader,
    read_up_to,
)
from hullguard.engine.verdict import Detection, NotScannedReason, Verdict, VerdictKind
from hullguard.engine.yararules import ScanTimeout, YaraScanError

if TYPE_CHECKING:
    from hullguard.engine.hashsigs import HashDatabase
    from hullguard.engine.yararules import YaraRules

_MAX_TAR_META = 1 << 20
"""Largest pax/GNU long-name header accepted; tarfile reads these whole into memory."""

ReadAt = Callable[[int, int], bytes]
_Key = tuple[VerdictKind, NotScannedReason | None, tuple[str, ...], Detection | None]


class _SafeTarInfo(tarfile.TarInfo):
    """Refuses oversized metadata headers before ``tarfile`` reads them into memory."""

    def _proc_member(self, tf: tarfile.TarFile) -> Any:
        if self.type in (
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
        ) and self.size > _MAX_TAR_META:
            raise tarfile.HeaderError(f"oversized tar metadata header ({self.size} bytes)")
        return super()._proc_member(tf)  # type: ignore[misc]


class ObjectScan:
    """Collects the verdicts of one top-level object; never raises for bad input."""

    def __init__(self, limits: ScanLimits, hashdb: HashDatabase, yara: YaraRules, name: str = "") -> None:
        self.limits = limits
        self.hashdb = hashdb
        self.yara = yara
        self.name = name
        self.budget = Budget(limits.max_object_size)
        self.verdicts: list[Verdict] = []
        self._seen: set[_Key] = set()
        self.scanned_bytes = 0

    # -- results ---------------------------------------------------------------------------
    def add(self, verdict: Verdict) -> None:
        key = (verdict.kind, verdict.reason, verdict.inner, verdict.detection)
        if key not in self._seen:
            self._seen.add(key)
            self.verdicts.append(verdict)

    def not_scanned(self, reason: NotScannedReason, detail: str, inner: tuple[str, ...]) -> None:
        self.add(Verdict.not_scanned(reason, detail, inner))

    # -- leaf checks -----------------------------------------------------------------------
    def leaf(self, data: bytes, inner: tuple[str, ...], whole: tuple[int, ReadAt] | None = None) -> None:
        """EICAR, hash and YARA checks on ``data``. ``whole`` = (size, read_at) of the full
        object when ``data`` is only its scanned prefix (hashes and SHA-1 then use it)."""
        self.scanned_bytes += len(data)
        found: list[Detection] = []
        if is_eicar(data):
            found.append(EICAR_DETECTION)
        digests: dict[str, str] = {}
        if whole is None:
            hits, digests = self.hashdb.match(data)
        else:
            hits, _ = self.hashdb.match_reader(*whole)
        found.extend(hits)
        try:
            found.extend(self.yara.scan(data))
        except ScanTimeout as exc:
            self.not_scanned(NotScannedReason.TIMEOUT, str(exc), inner)
        except YaraScanError as exc:
            self.not_scanned(NotScannedReason.ERROR, f"YARA: {exc}", inner)
        if found:
            sha1 = digests.get("sha1", "").upper() or _sha1(data, whole)
            for det in found:
                self.add(Verdict.detected(det, sha1, inner))

    def hash_whole(self, size: int, read_at: ReadAt, inner: tuple[str, ...] = ()) -> None:
        """Hash signatures only, over a large object read in chunks (its raw bytes are not
        YARA-scanned because it is unpacked instead)."""
        hits, _ = self.hashdb.match_reader(size, read_at)
        if hits:
            sha1 = _sha1(b"", (size, read_at))
            for det in hits:
                self.add(Verdict.detected(det, sha1, inner))

    # -- dispatch --------------------------------------------------------------------------
    def blob(self, data: bytes, inner: tuple[str, ...], depth: int) -> None:
        """A whole file or member in memory: scan it, then unpack it if it is an archive."""
        self.leaf(data, inner)
        kind = sniff(data[:SNIFF_SIZE])
        if kind is not None:
            self.unpack(kind, io.BytesIO(data), inner, depth, charged=depth > 0, raw_head=data[:4096])

    def stream(self, src: Any, size: int | None, inner: tuple[str, ...], depth: int) -> None:
        """A member read once from ``src`` (size known or not)."""
        maxf = self.limits.max_file_size
        head = read_up_to(src, SNIFF_SIZE)
        kind = sniff(head)
        if size is not None and size > maxf and kind is not None and kind != "zip":
            self.unpack(kind, PrefixedReader(head, src), inner, depth, charged=True, raw_head=head)
            return
        if len(head) > maxf:
            self.over_limit(head[:maxf], PrefixedReader(head[maxf:], src), inner, depth)
            return
        data = read_up_to(src, maxf - len(head), prefix=head)
        more = src.read(1) if len(data) == maxf else b""
        if not more:
            self.blob(data, inner, depth)
            return
        self.over_limit(data, PrefixedReader(more, src), inner, depth)

    def over_limit(self, data: bytes, rest: Any, inner: tuple[str, ...], depth: int) -> None:
        """A member larger than the file size limit: ``data`` is its first ``max_file_size``
        bytes, ``rest`` the remainder. Archives are unpacked as a stream, anything else has its
        first bytes scanned. No second copy of ``data`` is made (peak memory per file = the limit)."""
        maxf = self.limits.max_file_size
        head = data[:SNIFF_SIZE]
        kind = sniff(head)
        if kind is not None and kind != "zip":
            self.unpack(kind, PrefixedReader(data, rest), inner, depth, charged=True, raw_head=head)
            return
        self.leaf(data, inner)
        what = "zip member too large to unpack without seeking; " if kind == "zip" else ""
        self.not_scanned(NotScannedReason.TOO_LARGE, f"{what}only the first {maxf} bytes were scanned", inner)

    def unpack(self, kind: Kind, src: Any, inner: tuple[str, ...], depth: int, *, charged: bool,
               raw_head: bytes = b"") -> None:
        if self.budget.exhausted:
            return
        if depth >= self.limits.max_depth:
            detail = f"{kind} nested deeper than {self.limits.max_depth} levels"
            self.not_scanned(NotScannedReason.DEPTH_LIMIT, detail, inner)
            return
        if kind == "zip":
            self.walk_zip(src, inner, depth, charged)
        elif kind == "tar":
            self.walk_tar(src, inner, depth, charged)
        elif kind in COMPRESSED:
            self.decompress(kind, src, inner, depth, raw_head)

    # -- compression layers ----------------------------------------------------------------
    def decompress(self, kind: str, src: Any, inner: tuple[str, ...], depth: int, raw_head: bytes) -> None:
        reader = DecompressReader(kind, src, self.budget, self.limits.max_ratio)
        try:
            head = read_up_to(reader, SNIFF_SIZE)
            if sniff(head) == "tar":
                self.unpack("tar", PrefixedReader(head, reader), inner, depth + 1, charged=True)
            elif head or not reader.error:
                outer = inner[-1] if inner else self.name
                name = (gzip_member_name(raw_head) if kind == "gzip" else None) or (
                    strip_suffix(outer, kind) if outer else "content"
                )
                self.stream(PrefixedReader(head, reader), None, (*inner, name), depth + 1)
        except LimitReached as exc:
            if exc.source is not reader:
                raise
            self.not_scanned(exc.reason, exc.detail, inner)
        if reader.error:
            self.not_scanned(NotScannedReason.CORRUPT, reader.error, inner)

    # -- containers ------------------------------------------------------------------------
    def walk_tar(self, src: Any, inner: tuple[str, ...], depth: int, charged: bool) -> None:
        count = 0
        try:
            with tarfile.open(fileobj=src, mode="r|", tarinfo=_SafeTarInfo) as tf:
                complete = True
                for member in tf:
                    if self.budget.exhausted:
                        complete = False
                        break
                    if not member.isreg():
                        continue  # links, devices, dirs: names only, nothing to scan or create
                    count += 1
                    if count > self.limits.max_files:
                        self.not_scanned(
                            NotScannedReason.FILE_COUNT_LIMIT,
                            f"more than {self.limits.max_files} files; the rest were not scanned",
                            inner,
                        )
                        complete = False
                        break
                    member_src = tf.extractfile(member)
                    if member_src is None:
                        continue
                    reader = ChargedReader(member_src, self.budget, charge=not charged)
                    path = (*inner, member.name)
                    try:
                        self.stream(reader, member.size, path, depth + 1)
                    except LimitReached as exc:
                        if exc.source is not reader:
                            raise
                        self.not_scanned(exc.reason, exc.detail, path)
                if complete and tf.fileobj is not None and tf.fileobj.tell() < tf.offset + tarfile.BLOCKSIZE:
                    detail = "tar truncated (no end-of-archive marker)"
                    self.not_scanned(NotScannedReason.CORRUPT, detail, inner)
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
            self.not_scanned(NotScannedReason.CORRUPT, f"tar: {exc}", inner)

    def walk_zip(self, src: Any, inner: tuple[str, ...], depth: int, charged: bool) -> None:
        limits = self.limits
        try:
            size = src.seek(0, io.SEEK_END)
            src.seek(max(0, size - 66_000))
            declared = zip_declared_entries(src.read())
            src.seek(0)
            if declared is not None and declared > max(65_535, 10 * limits.max_files):
                self.not_scanned(
                    NotScannedReason.FILE_COUNT_LIMIT, f"zip declares {declared} entries; not unpacked", inner
                )
                return
            zf = zipfile.ZipFile(src)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError) as exc:
            self.not_scanned(NotScannedReason.CORRUPT, f"zip: {exc}", inner)
            return
        count = 0
        with zf:
            for info in zf.infolist():
                if self.budget.exhausted:
                    break
                if info.is_dir():
                    continue
                count += 1
                if count > limits.max_files:
                    self.not_scanned(
                        NotScannedReason.FILE_COUNT_LIMIT,
                        f"more than {limits.max_files} files; the rest were not scanned",
                        inner,
                    )
                    break
                self._zip_member(zf, info, (*inner, info.filename), depth, charged)

    def _zip_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: tuple[str, ...], depth: int,
                    charged: bool) -> None:
        if info.flag_bits & 0x1:
            self.not_scanned(NotScannedReason.ENCRYPTED, "encrypted zip member", path)
            return
        try:
            member = zf.open(info)
        except NotImplementedError as exc:
            self.not_scanned(NotScannedReason.ERROR, f"zip: {exc}", path)
            return
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
            self.not_scanned(NotScannedReason.CORRUPT, f"zip: {exc}", path)
            return
        compressed = info.compress_type != zipfile.ZIP_STORED
        # zipfile never returns more than the declared size nor reads more than the declared
        # packed size, so the declared ratio bounds the real one: judge it before inflating.
        if (
            compressed
            and info.file_size > RATIO_MIN_BYTES
            and info.file_size > self.limits.max_ratio * max(1, info.compress_size)
        ):
            member.close()
            ratio = f"ratio above {self.limits.max_ratio:g}"
            detail = f"{info.file_size} bytes from {info.compress_size} packed ({ratio})"
            self.not_scanned(NotScannedReason.RATIO_LIMIT, detail, path)
            return
        reader = ChargedReader(
            member,
            self.budget,
            packed=info.compress_size if compressed else None,
            max_ratio=self.limits.max_ratio,
            charge=compressed or not charged,
        )
        try:
            with member:
                self.stream(reader, info.file_size, path, depth + 1)
        except LimitReached as exc:
            if exc.source is not reader:
                raise
            self.not_scanned(exc.reason, exc.detail, path)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
            self.not_scanned(NotScannedReason.CORRUPT, f"zip: {exc}", path)


def _sha1(data: bytes, whole: tuple[int, ReadAt] | None) -> str:
    if whole is None:
        return hashlib.sha1(data, usedforsecurity=False).hexdigest().upper()
    size, read_at = whole
    h = hashlib.sha1(usedforsecurity=False)
    offset = 0
    while offset < size:
        chunk = read_at(offset, min(CHUNK * 4, size - offset))
        if not chunk:
            break
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest().upper()
