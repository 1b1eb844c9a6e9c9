"""Images in a content-addressed blob store: an OCI image layout directory, containerd's store.

The image is resolved from its root (``index.json`` of the layout, or the descriptor the
store names the image by) through indexes to the manifest for the wanted platform, then to
the config and its layers. Metadata blobs are read into memory with a size bound and their
digests are checked; layers are streamed from the store by :class:`ImageScanner`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from hullguard.objects.images.digest import Readable, digest_parts
from hullguard.objects.images.manifest import (
    MAX_JSON,
    Descriptor,
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
from hullguard.objects.images.scanner import ImageScanner, LayerJob, MissingBlob
from hullguard.objects.uri import escape_text

MAX_INDEX_DEPTH = 4


class BlobStore(Protocol):
    trusted: bool
    """True when the store checked every blob's digest when it was written (containerd)."""

    def has_blob(self, digest: str) -> bool: ...

    def open_blob(self, digest: str) -> AbstractContextManager[Readable]: ...


def read_blob(store: BlobStore, digest: str, what: str) -> bytes:
    """A metadata blob, bounded in size and checked against its digest."""
    algo, hexpart = digest_parts(digest)
    try:
        with store.open_blob(digest) as f:
            data = f.read(MAX_JSON + 1)
    except MissingBlob:
        raise ImageError(f"{what}: blob {digest} is missing from the store") from None
    except OSError as exc:
        raise ImageError(f"{what}: cannot read blob {digest}: {exc.strerror or exc}") from None
    if len(data) > MAX_JSON:
        raise ImageError(f"{what}: blob {digest} is too large for image metadata")
    if hashlib.new(algo, data).hexdigest() != hexpart:
        raise ImageError(f"{what}: blob {digest} does not match its digest (corrupt store)")
    return data


def resolve(store: BlobStore, entries: list[Descriptor], platform: Platform,
            what: str) -> Descriptor:
    """The image manifest's descriptor for ``platform``; follows nested indexes."""
    desc = choose_platform(entries, platform, what)
    for _ in range(MAX_INDEX_DEPTH):
        data = read_blob(store, desc.digest, what)
        doc: Any = load_json(data, f"{what}: {desc.digest}")
        if not isinstance(doc, dict):
            raise ImageError(f"{what}: {desc.digest} is not a JSON object")
        if not is_index(doc, desc.media_type):
            return desc
        desc = choose_platform(index_entries(doc, f"{what}: {desc.digest}"), platform,
                               f"{what}: {desc.digest}")
    raise ImageError(f"{what}: indexes nested more than {MAX_INDEX_DEPTH} deep")


def scan_blob_image(scanner: ImageScanner, store: BlobStore, entries: list[Descriptor], ref: ImageRef,
                    platform: Platform) -> ImageReport:
    """Scan the image the descriptors ``entries`` (an index, or one root) lead to."""
    what = escape_text(ref.name)
    desc = resolve(store, entries, platform, what)
    manifest = parse_manifest(read_blob(store, desc.digest, what), f"{what}: {desc.digest}")
    config = parse_config(read_blob(store, manifest.config.digest, what), f"{what}: {manifest.config.digest}")
    if len(manifest.layers) != len(config.diff_ids):
        raise ImageError(f"{what}: manifest names {len(manifest.layers)} layers, the config "
                         f"{len(config.diff_ids)}")
    ref = ImageRef(ref.source, ref.name, image_id=manifest.config.digest, manifest_digest=desc.digest,
                   platform=f"{config.os}/{config.architecture}".strip("/"), namespace=ref.namespace)
    jobs = []
    for i, (layer, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
        present = store.has_blob(layer.digest)
        jobs.append(LayerJob(i, diff_id, layer.digest, layer.digest,
                             opener=_opener(store, layer.digest) if present else None))
    return scanner.scan_jobs(ref, jobs, trusted=store.trusted)


def _opener(store: BlobStore, digest: str) -> Any:
    return lambda: store.open_blob(digest)


@contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """Open a blob file without following a symlink in its last component; regular files only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MissingBlob(f"blob file {escape_text(str(path))} does not exist") from None
    except OSError as exc:
        raise MissingBlob(f"cannot open blob file {escape_text(str(path))}: {exc.strerror}") from None
    f = os.fdopen(fd, "rb", buffering=1 << 20)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MissingBlob(f"blob {escape_text(str(path))} is not a regular file")
        yield f
    finally:
        f.close()


class DirStore:
    """``blobs/<algo>/<hex>`` under a directory: an OCI layout, or containerd's content store."""

    def __init__(self, root: Path, *, trusted: bool) -> None:
        self.root = root
        self.trusted = trusted

    def path(self, digest: str) -> Path:
        algo, hexpart = digest_parts(digest)
        return self.root / "blobs" / algo / hexpart

    def has_blob(self, digest: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path(digest)).st_mode)
        except OSError:
            return False

    def open_blob(self, digest: str) -> AbstractContextManager[Readable]:
        return open_regular(self.path(digest))


def scan_oci_dir(scanner: ImageScanner, directory: Path, *, want: str = "",
                 platform: Platform | None = None) -> ImageReport:
    """``oci:DIR[:REF]``: an OCI image layout; ``want`` picks a ``ref.name`` when there are several."""
    what = escape_text(str(directory))
    layout = directory / "oci-layout"
    index_path = directory / "index.json"
    if not directory.is_dir():
        raise ImageError(f"{what}: not a directory (oci: needs an OCI image layout directory)")
    if not layout.is_file() or not index_path.is_file():
        raise ImageError(f"{what}: not an OCI image layout (no oci-layout or index.json)")
    try:
        with open_regular(index_path) as f:
            index_data = f.read(MAX_JSON + 1)
    except MissingBlob as exc:
        raise ImageError(f"{what}: {exc}") from None
    doc = load_json(index_data, f"{what}/index.json")
    if not isinstance(doc, dict):
        raise ImageError(f"{what}/index.json is not a JSON object")
    entries = index_entries(doc, f"{what}/index.json")
    if want:
        named = [e for e in entries if e.ref_name == want]
        if not named:
            names = ", ".join(sorted({e.ref_name for e in entries if e.ref_name})) or "none"
            raise ImageError(f"{what}: no image named {escape_text(want)} in index.json (names: {names})")
        entries = named
    name = want or next((e.ref_name for e in entries if e.ref_name and len(entries) == 1), "") or str(directory)
    ref = ImageRef("oci", name if name != str(directory) else str(directory))
    return scan_blob_image(scanner, DirStore(directory, trusted=False), entries, ref, platform or Platform.host())
