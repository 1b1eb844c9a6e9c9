"""Archives: formats by magic, nesting with inner paths, limits, corruption, encryption."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import resource
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from engine_samples import tar_bytes, zip_bytes

from hullguard.engine.engine import Engine
from hullguard.engine.limits import ScanLimits
from hullguard.engine.verdict import NotScannedReason, ScanOutcome


def detected_paths(out: ScanOutcome) -> list[tuple[str, ...]]:
    return [v.inner for v in out.detections]


def reasons(out: ScanOutcome) -> list[NotScannedReason | None]:
    return [v.reason for v in out.not_scanned]


def test_tar(engine: Engine, eicar: bytes) -> None:
    data = tar_bytes([("docs/readme.txt", b"hello\n"), ("bin/eicar.com", eicar)])
    out = engine.scan_bytes(data)
    assert detected_paths(out) == [("bin/eicar.com",)]
    assert out.not_scanned == ()
    assert out.detections[0].sha1 == "3395856CE81F2B7382DEE72602F798B642F14140"


@pytest.mark.parametrize(
    "compress",
    [gzip.compress, bz2.compress, lambda d: lzma.compress(d, format=lzma.FORMAT_XZ)],
    ids=["tgz", "tbz2", "txz"],
)
def test_compressed_tar_members_shown_directly(
    engine: Engine, eicar: bytes, compress: Callable[[bytes], bytes]
) -> None:
    data = compress(tar_bytes([("a.txt", b"a" * 5000), ("x/eicar.com", eicar)]))
    out = engine.scan_bytes(data)
    assert detected_paths(out) == [("x/eicar.com",)]
    assert out.not_scanned == ()


def test_zip(engine: Engine, eicar: bytes) -> None:
    out = engine.scan_bytes(zip_bytes([("a.txt", b"text"), ("sub/eicar.com", eicar)]))
    assert detected_paths(out) == [("sub/eicar.com",)]
    stored = engine.scan_bytes(zip_bytes([("eicar.com", eicar)], zipfile.ZIP_STORED))
    assert detected_paths(stored) == [("eicar.com",)]


def test_plain_gzip_inner_name(engine: Engine, eicar: bytes) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="stored-name.com", mode="wb", fileobj=buf) as gz:
        gz.write(eicar)
    assert detected_paths(engine.scan_bytes(buf.getvalue())) == [("stored-name.com",)]
    nameless = gzip.compress(eicar)  # no FNAME: the outer name without .gz
    assert detected_paths(engine.scan_bytes(nameless, name="test.com.gz")) == [("test.com",)]


def test_zip_in_tar_in_gz(engine: Engine, eicar: bytes, tmp_path: Path) -> None:
    inner_zip = zip_bytes([("readme", b"r"), ("eicar.com", eicar)])
    tgz = gzip.compress(tar_bytes([("layer/inner.zip", inner_zip)]))
    out = engine.scan_bytes(tgz)
    assert detected_paths(out) == [("layer/inner.zip", "eicar.com")]
    # tar.gz inside zip inside tar, via a file descriptor
    outer = tar_bytes([("srv/a.zip", zip_bytes([("deep.tar.gz", tgz)]))])
    path = tmp_path / "outer.tar"
    path.write_bytes(outer)
    fd = os.open(path, os.O_RDONLY)
    try:
        out = engine.scan_fd(fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # read by offset, fd position untouched
    finally:
        os.close(fd)
    assert detected_paths(out) == [("srv/a.zip", "deep.tar.gz", "layer/inner.zip", "eicar.com")]


def test_archive_detected_by_magic_not_name(engine: Engine, eicar: bytes) -> None:
    data = zip_bytes([("e.com", eicar)])
    assert detected_paths(engine.scan_bytes(data, name="picture.jpg")) == [("e.com",)]
    assert engine.scan_bytes(b"not an archive", name="x.zip").is_clean


def test_hostile_member_names_are_only_names(engine: Engine, eicar: bytes, tmp_path: Path) -> None:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("/etc/evil", "../../escape.com"):
            info = tarfile.TarInfo(name)
            info.size = len(eicar)
            tf.addfile(info, io.BytesIO(eicar))
        for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE):
            info = tarfile.TarInfo(f"link{kind!r}")
            info.type = kind
            info.linkname = "/etc/shadow"
            tf.addfile(info)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        out = engine.scan_bytes(buf.getvalue())
    finally:
        os.chdir(cwd)
    assert detected_paths(out) == [("/etc/evil",), ("../../escape.com",)]
    assert list(tmp_path.iterdir()) == []


def _nest(eicar: bytes, levels: int) -> bytes:
    data = eicar
    for i in range(levels):
        data = zip_bytes([(f"level{i}.zip" if i else "eicar.com", data)], zipfile.ZIP_STORED)
    return data


def test_depth_limit_50_levels(engine: Engine, eicar: bytes) -> None:
    out = engine.scan_bytes(_nest(eicar, 50))
    assert out.detections == ()
    (v,) = out.not_scanned
    assert v.reason is NotScannedReason.DEPTH_LIMIT
    assert len(v.inner) == 17  # the archive at depth 17 is not opened


def test_depth_limit_configurable(eicar: bytes) -> None:
    data = _nest(eicar, 5)
    assert Engine.load().scan_bytes(data).detections
    out = Engine.load(limits=ScanLimits(max_depth=3)).scan_bytes(data)
    assert out.detections == () and reasons(out) == [NotScannedReason.DEPTH_LIMIT]


def _zip_bomb(size: int) -> bytes:
    """A zip holding ``size`` zero bytes, deflated by streaming (never ``size`` in memory)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = [comp.compress(chunk) for _ in range(size >> 20)]
    parts.append(comp.flush())
    body = b"".join(parts)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    name = b"zeros.bin"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(body), size, len(name), 0)
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(body), size, len(name), 0, 0, 0, 0, 0, 0
    )
    cd_offset = len(local) + len(name) + len(body)
    cd = central + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(cd), cd_offset, 0)
    return local + name + body + cd + end


def test_zip_bomb_ratio_limit_fast_and_bounded(engine: Engine) -> None:
    bomb = _zip_bomb(1 << 30)  # 1 GiB of zeros, ~1 MB packed
    assert len(bomb) < 2 << 20
    with zipfile.ZipFile(io.BytesIO(bomb)) as zf:
        assert zf.infolist()[0].file_size == 1 << 30
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    out = engine.scan_bytes(bomb)
    elapsed = time.monotonic() - start
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert reasons(out) == [NotScannedReason.RATIO_LIMIT]
    assert out.not_scanned[0].inner == ("zeros.bin",)
    assert elapsed < 3.0
    assert grown_kb < 64 * 1024


def test_gzip_bomb_and_total_size_limit(eicar: bytes) -> None:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    gz = b"".join(comp.compress(bytes(1 << 20)) for _ in range(300)) + comp.flush()
    out = Engine.load().scan_bytes(gz, name="zeros.gz")
    assert reasons(out) == [NotScannedReason.RATIO_LIMIT] and out.not_scanned[0].inner == ()
    # without the ratio limit the object budget stops it (decompressed bytes are counted)
    eng = Engine.load(limits=ScanLimits(max_ratio=1e9, max_object_size=8 << 20, max_file_size=4 << 20))
    tgz = gzip.compress(tar_bytes([(f"z{i}", bytes(1 << 20)) for i in range(12)] + [("e.com", eicar)]))
    out = eng.scan_bytes(tgz)
    assert reasons(out) == [NotScannedReason.TOTAL_SIZE_LIMIT] and out.detections == ()
    out = eng.scan_bytes(gz, name="zeros.gz")  # one member: only max_file_size is read
    assert [(v.reason, v.inner) for v in out.not_scanned] == [(NotScannedReason.TOO_LARGE, ("zeros",))]
    # a member over max_file_size: its first bytes are scanned, the rest reported
    big = tar_bytes([("big.bin", eicar + bytes(5 << 20)), ("after.com", eicar)])
    out = Engine.load(limits=ScanLimits(max_file_size=1 << 20)).scan_bytes(big)
    assert [(v.reason, v.inner) for v in out.not_scanned] == [(NotScannedReason.TOO_LARGE, ("big.bin",))]
    assert detected_paths(out) == [("after.com",)]


def test_total_size_limit_stops_tar(eicar: bytes) -> None:
    files = [(f"f{i}.bin", os.urandom(1 << 20)) for i in range(6)] + [("last.com", eicar)]
    out = Engine.load(limits=ScanLimits(max_object_size=3 << 20)).scan_bytes(tar_bytes(files))
    assert reasons(out) == [NotScannedReason.TOTAL_SIZE_LIMIT]
    assert out.detections == ()


def test_file_count_limit(eicar: bytes) -> None:
    files = [(f"f{i}.txt", b"x") for i in range(20)] + [("eicar.com", eicar)]
    eng = Engine.load(limits=ScanLimits(max_files=10))
    for data in (tar_bytes(files), zip_bytes(files)):
        out = eng.scan_bytes(data)
        assert reasons(out) == [NotScannedReason.FILE_COUNT_LIMIT]
        assert out.detections == ()
    assert Engine.load().scan_bytes(zip_bytes(files)).detections


def test_default_limits_are_the_documented_ones(engine: Engine, eicar: bytes) -> None:
    mb = 1024 * 1024
    limits = ScanLimits()
    assert (limits.max_depth, limits.max_files, limits.max_file_size, limits.max_object_size) == \
        (17, 10_000, 100 * mb, 400 * mb)
    assert engine.limits == limits
    # 10,000 members are scanned, the 10,001st is not (tar and zip alike)
    members = [(f"f{i}", b"") for i in range(10_000)]
    for make in (tar_bytes, zip_bytes):
        assert engine.scan_bytes(make([*members[:-1], ("e.com", eicar)])).detections
        out = engine.scan_bytes(make([*members, ("e.com", eicar)]))
        assert reasons(out) == [NotScannedReason.FILE_COUNT_LIMIT] and out.detections == ()


@pytest.mark.parametrize("kind", ["tgz", "tar", "zip", "gz", "bz2", "xz"])
def test_truncated_archives_are_corrupt(engine: Engine, eicar: bytes, kind: str) -> None:
    first = [("first.com", eicar), ("second.bin", os.urandom(200_000))]
    data = {
        "tgz": lambda: gzip.compress(tar_bytes(first)),
        "tar": lambda: tar_bytes(first),
        "zip": lambda: zip_bytes(first),
        "gz": lambda: gzip.compress(eicar + os.urandom(200_000)),
        "bz2": lambda: bz2.compress(eicar + os.urandom(200_000)),
        "xz": lambda: lzma.compress(eicar + os.urandom(200_000)),
    }[kind]()
    out = engine.scan_bytes(data[: len(data) // 2], name=f"t.{kind}")
    assert reasons(out) == [NotScannedReason.CORRUPT], out
    if kind in ("tgz", "tar"):
        assert detected_paths(out) == [("first.com",)]  # what was scanned before is still reported


def test_corrupt_zip_member_crc(engine: Engine) -> None:
    data = bytearray(zip_bytes([("a.txt", b"A" * 1000)], zipfile.ZIP_STORED))
    pos = data.index(b"A" * 100)
    data[pos] = ord("B")
    out = engine.scan_bytes(bytes(data))
    assert reasons(out) == [NotScannedReason.CORRUPT] and out.not_scanned[0].inner == ("a.txt",)


def test_encrypted_zip_member(engine: Engine, eicar: bytes) -> None:
    data = bytearray(zip_bytes([("secret.com", eicar), ("open.com", eicar)], zipfile.ZIP_STORED))
    # set the "encrypted" flag bit of the first member in its local and central headers
    local = data.index(b"PK\x03\x04")
    data[local + 6] |= 0x01
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x01
    out = engine.scan_bytes(bytes(data))
    assert [(v.reason, v.inner) for v in out.not_scanned] == [(NotScannedReason.ENCRYPTED, ("secret.com",))]
    assert detected_paths(out) == [("open.com",)]


def test_large_archive_on_fd_is_streamed(eicar: bytes, tmp_path: Path) -> None:
    eng = Engine.load(limits=ScanLimits(max_file_size=1 << 20))
    noise = os.urandom(3 << 20)
    for name, data in (
        ("big.tgz", gzip.compress(tar_bytes([("noise", noise), ("e.com", eicar)]), 1)),
        ("big.zip", zip_bytes([("noise", noise), ("e.com", eicar)], zipfile.ZIP_STORED)),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            out = eng.scan_fd(fd)
        finally:
            os.close(fd)
        assert detected_paths(out) == [("e.com",)], name
        assert [(v.reason, v.inner) for v in out.not_scanned] == [(NotScannedReason.TOO_LARGE, ("noise",))]


def test_scan_stream(engine: Engine, eicar: bytes) -> None:
    out = engine.scan_stream(io.BytesIO(gzip.compress(tar_bytes([("e.com", eicar)]))))
    assert detected_paths(out) == [("e.com",)]
    assert engine.scan_stream(io.BytesIO(b"harmless")).is_clean


def test_bad_input_never_raises(engine: Engine, tmp_path: Path) -> None:
    junks = (b"", b"PK\x03\x04", b"\x1f\x8b\x08", b"BZh91AY&SY", b"\xfd7zXZ\x00" + b"\x00" * 20, b"ustar")
    for junk in junks:
        engine.scan_bytes(junk)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = engine.scan_fd(fd)
    finally:
        os.close(fd)
    assert reasons(out) == [NotScannedReason.NOT_REGULAR]
    assert reasons(engine.scan_fd(987654)) == [NotScannedReason.UNREADABLE]
