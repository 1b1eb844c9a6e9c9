"""Building image layers and whole images in memory for the image tests (no Docker needed).

Layers are tar bytes made with ``tarfile``; images are written as a docker-archive (legacy
``manifest.json`` layout, or the OCI layout newer Docker writes) or as an OCI layout
directory. ``legacy_to_oci`` converts a real ``docker save`` archive into the OCI forms, so
integration tests get OCI inputs from images Docker built.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
"""Assembled from two halves, so no file in the repository holds the test string."""
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644
    devmajor: int = 0
    devminor: int = 0


def file(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(name, data, mode=mode)


def directory(name: str) -> Entry:
    return Entry(name, type=tarfile.DIRTYPE, mode=0o755)


def whiteout(path: str) -> Entry:
    head, _, base = path.rpartition("/")
    return Entry(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(dirpath: str) -> Entry:
    return Entry(f"{dirpath.rstrip('/')}/.wh..wh..opq")


def layer(*entries: Entry) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.mode, info.linkname = e.type, e.mode, e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def targz(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Image:
    layers: list[bytes]
    tag: str = "hgtest/image:latest"
    os: str = "linux"
    arch: str = "amd64"
    diff_ids: list[str] | None = None
    """Override the config's diff_ids (to test mismatches)."""
    extra_config: dict[str, object] = field(default_factory=dict)

    def config(self) -> bytes:
        ids = self.diff_ids if self.diff_ids is not None else [sha(x) for x in self.layers]
        doc = {"architecture": self.arch, "os": self.os, "rootfs": {"type": "layers", "diff_ids": ids},
               "config": {}, "history": [{"created_by": f"layer {i}"} for i in range(len(self.layers))]}
        doc.update(self.extra_config)
        return json.dumps(doc).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def legacy_archive(images: list[Image], *, skip_layers: set[int] = frozenset(),  # type: ignore[assignment]
                   truncate_at: int | None = None) -> bytes:
    """A ``docker save`` archive as Docker 20.10 writes it (layer dirs, config, manifest last)."""
    buf = io.BytesIO()
    manifest = []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for img in images:
            cfg = img.config()
            cfg_name = sha(cfg).split(":")[1] + ".json"
            paths = []
            for i, data in enumerate(img.layers):
                lid = hashlib.sha256(f"{cfg_name}{i}".encode()).hexdigest()
                paths.append(f"{lid}/layer.tar")
                if i in skip_layers:
                    continue
                _add(tar, f"{lid}/VERSION", b"1.0")
                _add(tar, f"{lid}/json", json.dumps({"id": lid}).encode())
                _add(tar, f"{lid}/layer.tar", data)
            _add(tar, cfg_name, cfg)
            manifest.append({"Config": cfg_name, "RepoTags": [img.tag], "Layers": paths})
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    data = buf.getvalue()
    return data[:truncate_at] if truncate_at is not None else data


def oci_blobs(img: Image, *, gzip_layers: bool = False) -> tuple[dict[str, bytes], dict[str, object]]:
    """The blobs of ``img`` and its manifest descriptor (for an index)."""
    blobs: dict[str, bytes] = {}
    layers = []
    for data in img.layers:
        stored = gzip.compress(data, mtime=0) if gzip_layers else data
        blobs[sha(stored)] = stored
        layers.append({"mediaType": MT_LAYER_GZ if gzip_layers else MT_LAYER, "digest": sha(stored),
                       "size": len(stored)})
    cfg = img.config()
    blobs[sha(cfg)] = cfg
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                           "config": {"mediaType": MT_CONFIG, "digest": sha(cfg), "size": len(cfg)},
                           "layers": layers}).encode()
    blobs[sha(manifest)] = manifest
    desc = {"mediaType": MT_MANIFEST, "digest": sha(manifest), "size": len(manifest),
            "platform": {"os": img.os, "architecture": img.arch},
            "annotations": {"org.opencontainers.image.ref.name": img.tag.rpartition(":")[2],
                            "io.containerd.image.name": img.tag}}
    return blobs, desc


def oci_index(images: list[Image], *, gzip_layers: bool = False, nested: bool = False
              ) -> tuple[dict[str, bytes], bytes]:
    blobs: dict[str, bytes] = {}
    descs = []
    for img in images:
        b, d = oci_blobs(img, gzip_layers=gzip_layers)
        blobs.update(b)
        descs.append(d)
    if nested:  # index.json -> one image index blob -> the platform manifests
        inner = json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descs}).encode()
        blobs[sha(inner)] = inner
        descs = [{"mediaType": MT_INDEX, "digest": sha(inner), "size": len(inner),
                  "annotations": {"org.opencontainers.image.ref.name": images[0].tag.rpartition(":")[2]}}]
    index = json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descs}).encode()
    return blobs, index


def write_oci_dir(path: Path, images: list[Image], *, gzip_layers: bool = False, nested: bool = False,
                  drop: set[str] = frozenset()) -> dict[str, bytes]:  # type: ignore[assignment]
    blobs, index = oci_index(images, gzip_layers=gzip_layers, nested=nested)
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        if digest not in drop:
            (path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    (path / "index.json").write_bytes(index)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return blobs


def oci_archive(images: list[Image], *, with_legacy_manifest: bool = True, gzip_layers: bool = False) -> bytes:
    """A docker-archive in the OCI layout (Docker >= 25): blobs/, index.json, manifest.json."""
    blobs, index = oci_index(images, gzip_layers=gzip_layers)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for digest in sorted(blobs):
            _add(tar, "blobs/sha256/" + digest.split(":")[1], blobs[digest])
        _add(tar, "index.json", index)
        if with_legacy_manifest:
            manifest = []
            for img in images:
                _b, _d = oci_blobs(img, gzip_layers=gzip_layers)
                cfg = img.config()
                stored = [gzip.compress(x, mtime=0) if gzip_layers else x for x in img.layers]
                manifest.append({"Config": "blobs/sha256/" + sha(cfg).split(":")[1], "RepoTags": [img.tag],
                                 "Layers": ["blobs/sha256/" + sha(s).split(":")[1] for s in stored]})
            _add(tar, "manifest.json", json.dumps(manifest).encode())
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    return buf.getvalue()


def legacy_to_oci(archive: Path, out_dir: Path, out_archive: Path | None = None, *,
                  gzip_layers: bool = True, out_index_only: Path | None = None) -> None:
    """Convert a legacy ``docker save`` archive to an OCI layout dir (and an OCI docker-archive
    as Docker >= 25 writes it, with a manifest.json too; ``out_index_only``: one with only
    index.json, so a reader must follow the OCI index)."""
    with tarfile.open(archive) as tar:
        def read(name: str) -> bytes:
            f = tar.extractfile(tar.getmember(name))
            assert f is not None
            return f.read()

        manifest = json.loads(read("manifest.json"))
        images = []
        for entry in manifest:
            cfg = json.loads(read(entry["Config"]))
            layers = []
            for path in entry["Layers"]:
                m = tar.getmember(path)
                while m.issym():
                    m = tar.getmember(os.path.normpath(os.path.join(os.path.dirname(m.name), m.linkname)))
                f = tar.extractfile(m)
                assert f is not None
                layers.append(f.read())
            img = Image(layers, tag=entry["RepoTags"][0], os=cfg.get("os", "linux"),
                        arch=cfg.get("architecture", "amd64"), diff_ids=cfg["rootfs"]["diff_ids"])
            images.append(img)
    write_oci_dir(out_dir, images, gzip_layers=gzip_layers)
    if out_archive is not None:
        out_archive.write_bytes(oci_archive(images, gzip_layers=False))
    if out_index_only is not None:
        out_index_only.write_bytes(oci_archive(images, gzip_layers=False, with_legacy_manifest=False))
