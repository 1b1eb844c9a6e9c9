"""Images that arrive as one tar stream: ``docker save`` output (from the daemon's export API
or a file), in the legacy ``manifest.json`` layout and the OCI layout newer Docker writes,
and ``podman save``.

The stream is read once, front to back, and never copied to disk. Its order is not ours to
choose: Docker writes layers before the ``manifest.json`` that says which layer is which,
so every layer is walked as it arrives and put in place when the manifest comes at the end.

A layer seen before (same bytes) is not scanned again. Its name in the stream says nothing
trustworthy, so it is recognised by size and the hash of its first MiB, then confirmed by
hashing the rest. In the rare case the confirmation fails (two layers with the same start)
the stream is read a second time and only those layers are scanned.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import posixpath
import queue
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from hullguard.engine.verdict import NotScannedReason, Verdict
from hullguard.objects.images.decompress import Peeked
from hullguard.objects.images.digest import DigestError, HashingReader, Readable, check_digest
from hullguard.objects.images.layerwalk import HEAD_BYTES, READ_ERRORS, LayerScan, PathVerdict
from hullguard.objects.images.manifest import (
    MAX_JSON,
    ImageError,
    Platform,
    choose_platform,
    index_entries,
    is_index,
    load_json,
    parse_config,
    parse_manifest,
)
from hullguard.objects.images.model import ImageRef, ImageReport
from hullguard.objects.images.scanner import ImageScanner, LayerOutcome, outcome_from_scan, scan_raw
from hullguard.objects.uri import escape_text

SMALL_BLOB = 4 * 1024 * 1024
"""OCI blobs up to this size are read into memory first: they may be configs or manifests."""
MAX_METADATA_TOTAL = 128 * 1024 * 1024
OUTER_BUFSIZE = 65536

StreamOpener = Callable[[], AbstractContextManager[Readable]]


class IterReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (the Docker SDK's ``image.save()``)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = memoryview(b"")  # a view: taking n bytes off a 1 MiB chunk copies nothing

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class PrefetchReader(io.RawIOBase):
    """Reads an iterator of chunks on a thread of its own, a bounded number of chunks ahead.

    Docker produces its export while we walk it; without this the two take turns. At most
    ``depth`` chunks (the SDK's chunk size each) are held.
    """

    def __init__(self, chunks: Iterable[bytes], depth: int = 16) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._buf = memoryview(b"")  # a view: taking n bytes off a 1 MiB chunk copies nothing
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(iter(chunks),), daemon=True,
                                        name="hullguard-image-export")
        self._thread.start()

    def _pump(self, it: Iterator[bytes]) -> None:
        try:
            for chunk in it:
                while not self._stop.is_set():
                    try:
                        self._queue.put(chunk, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(None)
        except BaseException as exc:  # handed to the reader, which raises it in its own thread
            self._queue.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            if self._done:
                return 0
            item = self._queue.get()
            if item is None:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                raise OSError(f"image export failed: {item}") from item
            self._buf = memoryview(item)
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        super().close()


def _member_name(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _blob_digest(name: str) -> str:
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        try:
            return check_digest(f"{parts[1]}:{parts[2]}")
        except DigestError:
            return ""
    return ""


@dataclass
class _Walked:
    """A layer found in the stream, before the manifest says where it goes."""

    scan: LayerScan | None = None
    raw_digest: str = ""
    cached_diff_id: str = ""
    """Set when the layer was recognised and confirmed as an already scanned one."""
    unconfirmed: bool = False
    """Recognised by its start but the full hash differed: needs a second pass."""


@dataclass
class _Pass:
    walked: dict[str, _Walked] = field(default_factory=dict)
    meta: dict[str, bytes] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    meta_total: int = 0


class ArchiveStreamScan:
    """One image from a ``docker save``-style tar stream; ``opener`` may be called twice."""

    def __init__(self, scanner: ImageScanner, opener: StreamOpener, *, source: str, name: str,
                 want: str = "", platform: Platform | None = None, namespace: str = "") -> None:
        self.scanner = scanner
        self.opener = opener
        self.source = source
        self.name = name
        self.want = want
        self.platform = platform or Platform.host()
        self.namespace = namespace

    def run(self) -> ImageReport:
        start = time.monotonic()
        first = self._pass(force=None)
        ref, plan = self._plan(first)
        redo = {key for key, _ in plan if key in first.walked and first.walked[key].unconfirmed}
        if redo:
            second = self._pass(force=redo)
            first.walked.update(second.walked)
        outcomes = [self._outcome(i, key, expected, blob, first)
                    for i, (key, (expected, blob)) in enumerate(plan)]
        return self.scanner.finish(ref, outcomes, start=start)

    # --- reading the stream -------------------------------------------------------------
    def _pass(self, force: set[str] | None) -> _Pass:
        state = _Pass()
        try:
            with self.opener() as stream, \
                    tarfile.open(fileobj=cast(Any, stream), mode="r|*", bufsize=OUTER_BUFSIZE) as tar:
                for member in tar:
                    self._member(tar, member, state, force)
        except READ_ERRORS as exc:
            if not state.meta and not state.walked:
                raise ImageError(f"{escape_text(self.name)}: not a readable image archive: "
                                 f"{escape_text(str(exc))}") from None
            state.meta.setdefault("#error", escape_text(str(exc)).encode())
        return state

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, state: _Pass,
                force: set[str] | None) -> None:
        name = _member_name(member.name)
        if member.issym() or member.islnk():
            base = posixpath.dirname(name) if member.issym() else ""
            state.aliases[name] = _member_name(posixpath.join(base, member.linkname))
            return
        if not member.isreg():
            return
        # Docker: ID/layer.tar or blobs/sha256/HEX; podman's docker-archive: HEX.tar at the top.
        is_layer = name.startswith("blobs/") or name.endswith(".tar") or ".tar." in posixpath.basename(name)
        if force is not None:
            if name in force:
                state.walked[name] = self._scan_member(tar, member, name, force_scan=True)
            return
        if not is_layer:
            if _is_metadata(name) and member.size <= MAX_JSON:
                self._keep_meta(state, name, _read(tar, member))
            return
        if name.startswith("blobs/") and member.size <= SMALL_BLOB:
            data = _read(tar, member)
            if _looks_like_json(data):
                self._keep_meta(state, name, data)
                return
            state.walked[name] = self._walk_bytes(data, name)
            return
        state.walked[name] = self._scan_member(tar, member, name, force_scan=False)

    @staticmethod
    def _keep_meta(state: _Pass, name: str, data: bytes) -> None:
        state.meta_total += len(data)
        if state.meta_total > MAX_METADATA_TOTAL:
            raise ImageError("image archive holds more metadata than any real image; refusing it")
        state.meta[name] = data

    def _walk_bytes(self, data: bytes, name: str) -> _Walked:
        known = self._recognise_named(name, data)
        if known is not None:
            return known
        head = data[:HEAD_BYTES]
        hit = self._recognise_head(len(data), head)
        if hit:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if digest in hit:
                return _Walked(raw_digest=digest, cached_diff_id=digest)
        scan, raw = scan_raw(io.BytesIO(data), self.scanner.scanner, name)
        self.scanner.remember(scan, raw if raw != scan.diff_id else "")
        return _Walked(scan, raw)

    def _scan_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, *,
                     force_scan: bool) -> _Walked:
        fileobj = tar.extractfile(member)
        if fileobj is None:
            return _Walked()
        src: Readable = cast(BinaryIO, fileobj)
        if not force_scan:
            blob = _blob_digest(name)
            diff = self._cached_diff_of_blob(blob) if blob else ""
            if diff:
                hashed = HashingReader(src)
                hashed.drain()
                if hashed.digest == blob:
                    return _Walked(raw_digest=blob, cached_diff_id=diff)
                return _Walked(raw_digest=hashed.digest, unconfirmed=True)
            head = fileobj.read(HEAD_BYTES)
            hit = self._recognise_head(member.size, head)
            if hit:
                hashed = HashingReader(Peeked(head, src))
                hashed.drain()
                if hashed.digest in hit:
                    return _Walked(raw_digest=hashed.digest, cached_diff_id=hashed.digest)
                return _Walked(raw_digest=hashed.digest, unconfirmed=True)
            src = Peeked(head, src)
        scan, raw = scan_raw(src, self.scanner.scanner, name)
        blob = _blob_digest(name)
        self.scanner.remember(scan, blob if blob and blob == raw else "")
        return _Walked(scan, raw)

    # --- recognising layers scanned before ----------------------------------------------
    def _has_result(self, diff_id: str) -> bool:
        cache = self.scanner.cache
        eng = self.scanner.scanner
        return cache is not None and cache.result(diff_id, eng.version, eng.db_version) is not None

    def _cached_diff_of_blob(self, blob: str) -> str:
        cache = self.scanner.cache
        if cache is None:
            return ""
        diff = blob if self._has_result(blob) else (cache.diff_id_of_blob(blob) or "")
        return diff if diff and self._has_result(diff) else ""

    def _recognise_named(self, name: str, data: bytes) -> _Walked | None:
        blob = _blob_digest(name)
        diff = self._cached_diff_of_blob(blob) if blob else ""
        if not diff:
            return None
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest == blob:
            return _Walked(raw_digest=blob, cached_diff_id=diff)
        return None

    def _recognise_head(self, size: int, head: bytes) -> set[str]:
        cache = self.scanner.cache
        if cache is None:
            return set()
        hint = "sha256:" + hashlib.sha256(head).hexdigest()
        return {d for d in cache.by_hint(size, hint) if self._has_result(d)}

    # --- the manifest -------------------------------------------------------------------
    def _plan(self, state: _Pass) -> tuple[ImageRef, list[tuple[str, tuple[str, str]]]]:
        """The image's layers in order: (member name, (expected diff_id, blob digest))."""
        what = escape_text(self.name)
        if "manifest.json" in state.meta:
            return self._plan_legacy(state, what)
        if "index.json" in state.meta:
            return self._plan_oci(state, what)
        if "#error" in state.meta:
            raise ImageError(f"{what}: image archive is corrupt or truncated before its manifest: "
                             f"{state.meta['#error'].decode()}")
        raise ImageError(f"{what}: no manifest.json or index.json: not a docker-archive or OCI archive")

    def _plan_legacy(self, state: _Pass, what: str) -> tuple[ImageRef, list[tuple[str, tuple[str, str]]]]:
        doc = load_json(state.meta["manifest.json"], f"{what}: manifest.json")
        if not isinstance(doc, list) or not doc or not all(isinstance(e, dict) for e in doc):
            raise ImageError(f"{what}: manifest.json is not a list of images")
        entry = _choose_legacy(doc, self.want, what)
        config_name = _member_name(str(entry.get("Config", "")))
        data = state.meta.get(config_name)
        if data is None:
            raise ImageError(f"{what}: image config {escape_text(config_name)} named by manifest.json "
                             "is missing from the archive")
        config = parse_config(data, f"{what}: {escape_text(config_name)}")
        layers = entry.get("Layers")
        if not isinstance(layers, list):
            raise ImageError(f"{what}: manifest.json Layers is not a list")
        if len(layers) != len(config.diff_ids):
            raise ImageError(f"{what}: manifest.json names {len(layers)} layers, the config "
                             f"{len(config.diff_ids)}")
        tags = entry.get("RepoTags") or []
        name = self.want or (str(tags[0]) if isinstance(tags, list) and tags else self.name)
        image_id = "sha256:" + posixpath.basename(config_name).removesuffix(".json")
        if config_name.startswith("blobs/"):
            image_id = _blob_digest(config_name) or image_id
        ref = ImageRef(self.source, name, image_id=image_id,
                       platform=f"{config.os}/{config.architecture}".strip("/"), namespace=self.namespace)
        plan = []
        for layer, diff_id in zip(layers, config.diff_ids, strict=True):
            key = self._resolve(state, _member_name(str(layer)))
            plan.append((key, (diff_id, _blob_digest(key))))
        return ref, plan

    def _plan_oci(self, state: _Pass, what: str) -> tuple[ImageRef, list[tuple[str, tuple[str, str]]]]:
        doc = load_json(state.meta["index.json"], f"{what}: index.json")
        if not isinstance(doc, dict):
            raise ImageError(f"{what}: index.json is not an object")
        entries = index_entries(doc, f"{what}: index.json")
        if self.want:
            named = [e for e in entries if e.ref_name in (self.want, self.want.rpartition(":")[2])
                     or (e.annotations or {}).get("io.containerd.image.name") == self.want]
            entries = named or entries
        desc = choose_platform(entries, self.platform, f"{what}: index.json")
        for _depth in range(4):
            blob = state.meta.get(_blob_name(desc.digest))
            if blob is None:
                raise ImageError(f"{what}: manifest {desc.digest} named by index.json is missing")
            inner = load_json(blob, f"{what}: {desc.digest}")
            if not (isinstance(inner, dict) and is_index(inner, desc.media_type)):
                break
            desc = choose_platform(index_entries(inner, f"{what}: {desc.digest}"), self.platform,
                                   f"{what}: {desc.digest}")
        else:
            raise ImageError(f"{what}: indexes nested too deeply")
        manifest = parse_manifest(state.meta[_blob_name(desc.digest)], f"{what}: {desc.digest}")
        config_blob = state.meta.get(_blob_name(manifest.config.digest))
        if config_blob is None:
            raise ImageError(f"{what}: config {manifest.config.digest} is missing from the archive")
        config = parse_config(config_blob, f"{what}: {manifest.config.digest}")
        if len(manifest.layers) != len(config.diff_ids):
            raise ImageError(f"{what}: manifest names {len(manifest.layers)} layers, the config "
                             f"{len(config.diff_ids)}")
        ref = ImageRef(self.source, self.want or self.name, image_id=manifest.config.digest,
                       manifest_digest=desc.digest,
                       platform=f"{config.os}/{config.architecture}".strip("/"), namespace=self.namespace)
        plan = [(self._resolve(state, _blob_name(layer.digest)), (diff_id, layer.digest))
                for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True)]
        return ref, plan

    @staticmethod
    def _resolve(state: _Pass, key: str) -> str:
        for _ in range(8):
            if key not in state.aliases:
                break
            key = state.aliases[key]
        return key

    def _outcome(self, index: int, key: str, expected: str, blob: str, state: _Pass) -> LayerOutcome:
        walked = state.walked.get(key)
        if walked is None:
            out = LayerOutcome(index, "missing", diff_id=expected, expected_diff_id=expected, blob_digest=blob)
            why = state.meta.get("#error")
            text = (f"layer {index}: {escape_text(key)} named by the manifest is missing from the archive"
                    + (f" (archive cut short: {why.decode()})" if why else ""))
            out.verdicts.append(PathVerdict("/", Verdict.not_scanned(NotScannedReason.UNREADABLE, text)))
            return out
        if walked.scan is not None:
            return outcome_from_scan(index, walked.scan, walked.raw_digest, expected_diff_id=expected,
                                     blob_digest=blob)
        hit = self.scanner.cached(index, walked.cached_diff_id, blob_digest=blob) if walked.cached_diff_id \
            else None
        if hit is None:  # the cache entry went away between the two look-ups, or unconfirmed twice
            out = LayerOutcome(index, "missing", diff_id=expected, expected_diff_id=expected, blob_digest=blob)
            out.verdicts.append(PathVerdict("/", Verdict.not_scanned(
                NotScannedReason.CHANGED, f"layer {index}: {escape_text(key)} changed between two reads")))
            return out
        hit.expected_diff_id = expected
        hit.raw_digest = walked.raw_digest
        if expected and hit.diff_id != expected:
            hit.problems.append(f"uncompressed digest {hit.diff_id} does not match the config's "
                                f"diff_id {expected}")
        if blob and walked.raw_digest and walked.raw_digest != blob:
            hit.problems.append(f"blob digest {walked.raw_digest} does not match the manifest's {blob}")
        return hit


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _is_metadata(name: str) -> bool:
    return name in ("manifest.json", "index.json", "oci-layout", "repositories") or (
        "/" not in name and name.endswith(".json"))


def _looks_like_json(data: bytes) -> bool:
    return data.lstrip()[:1] in (b"{", b"[")


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    return f.read() if f is not None else b""


def _choose_legacy(doc: list[dict[str, Any]], want: str, what: str) -> dict[str, Any]:
    if not want:
        if len(doc) == 1:
            return doc[0]
        tags = [t for e in doc for t in (e.get("RepoTags") or [])]
        raise ImageError(f"{what}: archive holds {len(doc)} images; name one: {', '.join(map(str, tags))}")
    wants = {want, want + ":latest", "docker.io/" + want, "docker.io/library/" + want}
    for e in doc:
        tags = e.get("RepoTags") or []
        if isinstance(tags, list) and wants & {str(t) for t in tags}:
            return e
    if len(doc) == 1:
        return doc[0]
    raise ImageError(f"{what}: no image tagged {escape_text(want)} in the archive")
