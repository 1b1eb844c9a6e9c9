"""Scanning an image layer by layer: cache look-up, digest checks, walking, hidden-file analysis.

Every image source ends up here with a list of :class:`LayerJob` (blob stores: OCI layout,
containerd) or with per-layer :class:`LayerOutcome` it produced while streaming an archive
(Docker export, docker-archive files, podman). :meth:`ImageScanner.finish` then checks the
digests against the config, decides for each finding whether a later layer hides it, and
builds the :class:`ImageReport`.

Trust: a store that verified content when it was written (the Docker daemon, containerd's
content store, podman) is trusted to hold the layers its config names, so a cached layer is
not even read. Files from elsewhere (an archive, an OCI directory) are hashed first: a cached
result is only used for bytes that really have the cached digest.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

from hullguard.engine.verdict import NotScannedReason, Verdict
from hullguard.objects.images.decompress import UnsupportedCompression, decompressed, open_as, peek
from hullguard.objects.images.digest import HashingReader, Readable, hash_stream
from hullguard.objects.images.layerwalk import (
    READ_ERRORS,
    LayerScan,
    PathVerdict,
    StreamScanner,
    path_key,
    walk_layer,
)
from hullguard.objects.images.model import HIDDEN_TEXT, ImageFinding, ImageRef, ImageReport, LayerReport
from hullguard.objects.layercache import LayerCache
from hullguard.objects.uri import escape_text

Opener = Callable[[], AbstractContextManager[Readable]]


class MissingBlob(Exception):
    """A blob the manifest names is not in the store."""


@dataclass
class LayerJob:
    index: int
    expected_diff_id: str = ""
    blob_digest: str = ""
    """Digest of the stored bytes (compressed layers); empty when the source has none."""
    name: str = ""
    opener: Opener | None = None


@dataclass
class LayerOutcome:
    index: int
    status: str
    """scanned, cached, missing, corrupt."""
    diff_id: str = ""
    expected_diff_id: str = ""
    blob_digest: str = ""
    raw_digest: str = ""
    size: int = 0
    files: int = 0
    scanned_bytes: int = 0
    verdicts: list[PathVerdict] = field(default_factory=list)
    shape: LayerScan | None = None
    problems: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    anomaly_count: int = 0


def scan_raw(raw: Readable, scanner: StreamScanner, label: str) -> tuple[LayerScan, str]:
    """Walk a stored layer blob (any compression); returns the walk and the blob's own digest."""
    try:
        kind, peeked = peek(raw)
        if kind == "tar":  # the blob is the layer: its digest is the diff_id, hashed once by the walk
            scan = walk_layer(peeked, scanner, label=label)
            return scan, scan.diff_id
        hashed = HashingReader(peeked)
        stream = open_as(hashed, kind)
    except (UnsupportedCompression, *READ_ERRORS) as exc:
        scan = LayerScan(complete=False)
        scan.verdicts.append(PathVerdict("/", Verdict.not_scanned(
            NotScannedReason.CORRUPT, f"{label}: cannot read layer: {escape_text(str(exc))}")))
        return scan, ""
    scan = walk_layer(stream, scanner, label=label)
    try:
        hashed.drain()
    except READ_ERRORS as exc:
        scan.complete = False
        scan.verdicts.append(PathVerdict("/", Verdict.not_scanned(
            NotScannedReason.CORRUPT, f"{label}: reading the layer failed: {escape_text(str(exc))}")))
    return scan, hashed.digest


def outcome_from_scan(index: int, scan: LayerScan, raw_digest: str, *, expected_diff_id: str = "",
                      blob_digest: str = "") -> LayerOutcome:
    out = LayerOutcome(index, "scanned" if scan.complete else "corrupt", diff_id=scan.diff_id,
                       expected_diff_id=expected_diff_id, blob_digest=blob_digest, raw_digest=raw_digest,
                       size=scan.size, files=scan.files, scanned_bytes=scan.scanned_bytes,
                       verdicts=list(scan.verdicts), shape=scan, anomalies=list(scan.anomalies),
                       anomaly_count=scan.anomaly_count)
    if scan.complete:
        if expected_diff_id and scan.diff_id != expected_diff_id:
            out.problems.append(f"uncompressed digest {scan.diff_id} does not match the config's "
                                f"diff_id {expected_diff_id}")
        if blob_digest and raw_digest and raw_digest != blob_digest:
            out.problems.append(f"blob digest {raw_digest} does not match the manifest's {blob_digest}")
    return out


class ImageScanner:
    """Scans layers with ``scanner`` (the engine), reusing results from ``cache`` when given."""

    def __init__(self, scanner: StreamScanner, cache: LayerCache | None = None) -> None:
        self.scanner = scanner
        self.cache = cache

    # --- cache ------------------------------------------------------------------------
    def cached(self, index: int, diff_id: str, *, blob_digest: str = "") -> LayerOutcome | None:
        if self.cache is None or not diff_id:
            return None
        hit = self.cache.result(diff_id, self.scanner.version, self.scanner.db_version)
        if hit is None:
            return None
        return LayerOutcome(index, "cached", diff_id=diff_id, expected_diff_id=diff_id,
                            blob_digest=blob_digest, files=hit.files, scanned_bytes=hit.scanned_bytes,
                            verdicts=list(hit.verdicts))

    def remember(self, scan: LayerScan, blob_digest: str = "") -> None:
        if self.cache is not None:
            self.cache.store(scan, self.scanner.version, self.scanner.db_version, blob_digest=blob_digest)

    def _verified(self, job: LayerJob) -> bool:
        """Do the stored bytes really have the digests the cache entry was made for?"""
        assert job.opener is not None
        assert self.cache is not None
        known = self.cache.diff_id_of_blob(job.blob_digest) if job.blob_digest else None
        with job.opener() as raw:
            hashed = HashingReader(raw)
            if job.blob_digest and known == job.expected_diff_id:
                hashed.drain()
                return hashed.digest == job.blob_digest
            stream, _ = decompressed(hashed)
            digest, _n = hash_stream(stream)
            hashed.drain()
        if digest != job.expected_diff_id:
            return False
        if job.blob_digest and hashed.digest != job.blob_digest:
            return False
        if job.blob_digest:
            self.cache.map_blob(job.blob_digest, digest)
        return True

    # --- blob-store images ------------------------------------------------------------
    def run_job(self, job: LayerJob, *, trusted: bool) -> LayerOutcome:
        label = f"layer {job.index}"
        if job.opener is None:
            return self._missing(job, f"{label}: blob {job.blob_digest or job.name} named by the manifest "
                                      "is missing from the store")
        hit = self.cached(job.index, job.expected_diff_id, blob_digest=job.blob_digest)
        if hit is not None:
            try:
                if trusted or self._verified(job):
                    return hit
            except MissingBlob as exc:
                return self._missing(job, f"{label}: {exc}")
            except (UnsupportedCompression, *READ_ERRORS):
                pass  # the full scan below reports what is wrong with the blob
        try:
            with job.opener() as raw:
                scan, raw_digest = scan_raw(raw, self.scanner, label)
        except MissingBlob as exc:
            return self._missing(job, f"{label}: {exc}")
        except OSError as exc:
            return self._missing(job, f"{label}: cannot open blob {job.blob_digest or job.name}: "
                                      f"{escape_text(exc.strerror or str(exc))}")
        out = outcome_from_scan(job.index, scan, raw_digest, expected_diff_id=job.expected_diff_id,
                                blob_digest=job.blob_digest)
        # Results are stored under the digest of the bytes actually read, so a layer that lies
        # about its diff_id can never put a result under the name of another layer.
        self.remember(scan, job.blob_digest if raw_digest == job.blob_digest else "")
        return out

    @staticmethod
    def _missing(job: LayerJob, text: str) -> LayerOutcome:
        out = LayerOutcome(job.index, "missing", diff_id=job.expected_diff_id,
                           expected_diff_id=job.expected_diff_id, blob_digest=job.blob_digest)
        out.verdicts.append(PathVerdict("/", Verdict.not_scanned(NotScannedReason.UNREADABLE, text)))
        return out

    def scan_jobs(self, ref: ImageRef, jobs: list[LayerJob], *, trusted: bool) -> ImageReport:
        start = time.monotonic()
        outcomes = [self.run_job(job, trusted=trusted) for job in jobs]
        return self.finish(ref, outcomes, start=start)

    # --- the report -------------------------------------------------------------------
    def _shape(self, out: LayerOutcome) -> LayerScan | None:
        if out.shape is None and self.cache is not None and out.diff_id and out.status == "cached":
            out.shape = self.cache.info(out.diff_id)
        return out.shape

    def finish(self, ref: ImageRef, outcomes: list[LayerOutcome], *, start: float) -> ImageReport:
        outcomes = sorted(outcomes, key=lambda o: o.index)
        findings: list[ImageFinding] = []
        layers: list[LayerReport] = []
        for out in outcomes:
            if out.status == "cached" and self.cache is not None and not out.anomalies:
                shape = self._shape(out) if out.verdicts else None
                if shape is not None:
                    out.anomalies, out.anomaly_count = shape.anomalies, shape.anomaly_count
            for problem in out.problems:
                out.verdicts.append(PathVerdict("/", Verdict.not_scanned(
                    NotScannedReason.CORRUPT, f"layer {out.index}: {problem}")))
            layer_digest = out.diff_id or out.expected_diff_id or out.blob_digest
            for pv in out.verdicts:
                hidden_by, how = self._hidden(out.index, pv.path, outcomes) if pv.path != "/" else (None, "")
                findings.append(self._finding(ref, out.index, layer_digest, pv, hidden_by, how))
            layers.append(LayerReport(
                index=out.index, diff_id=layer_digest, status=out.status, size=out.size, files=out.files,
                scanned_bytes=out.scanned_bytes, blob_digest=out.blob_digest,
                expected_diff_id=out.expected_diff_id, problems=tuple(out.problems),
                anomalies=tuple(out.anomalies), anomaly_count=out.anomaly_count))
        return ImageReport(ref, tuple(layers), tuple(findings), elapsed=time.monotonic() - start)

    def _hidden(self, index: int, path: str, outcomes: list[LayerOutcome]) -> tuple[int | None, str]:
        """The first later layer that deletes or replaces ``path``, and how."""
        ancestors = []
        parent = posixpath.dirname(path)
        while parent and parent != "/":
            ancestors.append(parent)
            parent = posixpath.dirname(parent)
        key = path_key(path)
        for out in outcomes:
            if out.index <= index:
                continue
            shape = self._shape(out)
            if shape is None:
                continue
            gone = set(shape.whiteouts)
            if path in gone or any(a in gone for a in ancestors):
                return out.index, "deleted by a whiteout"
            opaque = set(shape.opaque)
            if "/" in opaque or any(a in opaque for a in ancestors):
                return out.index, "its directory made opaque"
            if key in shape.entries:
                return out.index, "replaced"
            if any(path_key(a) in shape.nondirs for a in ancestors):
                return out.index, "a parent directory replaced"
        return None, ""

    @staticmethod
    def _finding(ref: ImageRef, index: int, layer_digest: str, pv: PathVerdict, hidden_by: int | None,
                 how: str) -> ImageFinding:
        notes = [f"layer {index} {layer_digest}"]
        if hidden_by is not None:
            notes.append(f"{HIDDEN_TEXT} ({how} in layer {hidden_by})")
        if pv.verdict.detail:
            notes.append(pv.verdict.detail)
        verdict = replace(pv.verdict, detail="; ".join(notes))
        uri = ref.uri(layer_digest, pv.path)
        if pv.verdict.inner:
            uri = uri.child(*pv.verdict.inner)
        return ImageFinding(uri, index, layer_digest, pv.path, verdict, hidden_by, how)
