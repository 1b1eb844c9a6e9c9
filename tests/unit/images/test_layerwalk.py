"""The layer walker on crafted tars: whiteouts, hostile names, links, devices, damage."""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile

import zstandard

from hullguard.engine.engine import Engine
from hullguard.engine.verdict import NotScannedReason, VerdictKind
from hullguard.objects.images.layerwalk import path_key, walk_layer
from hullguard.objects.images.scanner import scan_raw
from imagebuild import EICAR, Entry, directory, file, layer, opaque, sha, targz, whiteout


def detected_paths(scan: object) -> list[str]:
    return [pv.path for pv in scan.verdicts if pv.verdict.kind is VerdictKind.DETECTED]  # type: ignore[attr-defined]


def test_scans_regular_files_and_computes_diff_id(engine: Engine) -> None:
    data = layer(directory("etc"), file("etc/clean.txt", b"hello"), file("srv/eicar.com", EICAR))
    scan = walk_layer(io.BytesIO(data), engine)
    assert scan.complete
    assert scan.diff_id == sha(data)
    assert scan.size == len(data)
    assert scan.files == 2
    assert detected_paths(scan) == ["/srv/eicar.com"]
    v = scan.detections[0].verdict
    assert v.detection is not None and v.detection.name == "Eicar"
    assert v.sha1 == "3395856CE81F2B7382DEE72602F798B642F14140"


def test_whiteouts_and_opaque_dirs_are_recorded_not_scanned(engine: Engine) -> None:
    data = layer(whiteout("srv/eicar.com"), opaque("var/cache"), Entry("a/.wh..wh.plnk"), file("x", b"1"))
    scan = walk_layer(io.BytesIO(data), engine)
    assert scan.whiteouts == ["/srv/eicar.com"]
    assert scan.opaque == ["/var/cache"]
    assert scan.files == 1
    assert path_key("/x") in scan.entries and path_key("/srv/eicar.com") not in scan.entries


def test_absolute_and_dotdot_names_are_scanned_where_they_would_land(engine: Engine) -> None:
    data = layer(file("../../etc/evil", EICAR), file("/abs/evil", EICAR), file("a/../../b", b"x"))
    scan = walk_layer(io.BytesIO(data), engine)
    assert detected_paths(scan) == ["/etc/evil", "/abs/evil"]
    assert len(scan.anomalies) == 3
    assert "'../../etc/evil' is absolute or contains '..'" in scan.anomalies[0]


def test_hard_links(engine: Engine) -> None:
    data = layer(file("bin/tool", EICAR), Entry("bin/alias", type=tarfile.LNKTYPE, linkname="bin/tool"),
                 Entry("bin/out", type=tarfile.LNKTYPE, linkname="../../../etc/shadow"),
                 Entry("bin/lower", type=tarfile.LNKTYPE, linkname="usr/lib/libc.so"))
    scan = walk_layer(io.BytesIO(data), engine)
    # the link is a second name for the detected bytes; nothing is followed outside the layer
    assert detected_paths(scan) == ["/bin/tool", "/bin/alias"]
    assert any("points outside the layer root" in a for a in scan.anomalies)
    assert scan.files == 1


def test_device_nodes_and_fifos_are_noted_not_read(engine: Engine) -> None:
    data = layer(Entry("dev/sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0),
                 Entry("dev/mem", type=tarfile.CHRTYPE, devmajor=1, devminor=1),
                 Entry("run/fifo", type=tarfile.FIFOTYPE), Entry("lnk", type=tarfile.SYMTYPE, linkname="/etc"))
    scan = walk_layer(io.BytesIO(data), engine)
    assert scan.complete and scan.files == 0 and not scan.verdicts
    assert any("block device node /dev/sda (8,0)" in a for a in scan.anomalies)
    assert any("character device node /dev/mem (1,1)" in a for a in scan.anomalies)


def test_archive_inside_layer_is_unpacked_by_the_engine(engine: Engine) -> None:
    data = layer(file("opt/bundle.tar.gz", targz("inner/eicar.com", EICAR)))
    scan = walk_layer(io.BytesIO(data), engine)
    [pv] = scan.detections
    assert pv.path == "/opt/bundle.tar.gz" and pv.verdict.inner == ("inner/eicar.com",)


def test_truncated_layer_is_reported_corrupt(engine: Engine) -> None:
    data = layer(file("a", b"x" * 5000), file("b", EICAR))
    scan = walk_layer(io.BytesIO(data[:3000]), engine)
    assert not scan.complete
    bad = scan.verdicts[-1].verdict
    assert bad.reason is NotScannedReason.CORRUPT and "truncated" in bad.detail


def test_garbage_is_reported_corrupt(engine: Engine) -> None:
    scan, _raw = scan_raw(io.BytesIO(b"\x00\x01garbage" * 200), engine, "layer 3")
    assert not scan.complete
    assert scan.verdicts[-1].verdict.reason is NotScannedReason.CORRUPT
    assert scan.verdicts[-1].verdict.detail.startswith("layer 3:")


def test_header_claiming_a_huge_file_ends_as_corrupt(engine: Engine) -> None:
    info = tarfile.TarInfo("huge.bin")
    info.size = 1 << 40  # the header promises a terabyte, the stream has a kilobyte
    data = info.tobuf(tarfile.PAX_FORMAT) + b"x" * 1024
    scan = walk_layer(io.BytesIO(data), engine)
    assert not scan.complete
    assert scan.verdicts[-1].verdict.reason is NotScannedReason.CORRUPT


def test_compressed_layers(engine: Engine) -> None:
    data = layer(file("e", EICAR))
    for packed in (gzip.compress(data), zstandard.ZstdCompressor().compress(data), lzma.compress(data)):
        scan, raw = scan_raw(io.BytesIO(packed), engine, "l")
        assert scan.complete and scan.diff_id == sha(data) and raw == sha(packed)
        assert detected_paths(scan) == ["/e"]


def test_truncated_gzip_layer_is_corrupt(engine: Engine) -> None:
    packed = gzip.compress(layer(file("a", b"y" * 100000), file("e", EICAR)))
    scan, _ = scan_raw(io.BytesIO(packed[: len(packed) // 2]), engine, "l")
    assert not scan.complete
    assert scan.verdicts[-1].verdict.reason is NotScannedReason.CORRUPT


def test_nothing_is_written_to_disk(engine: Engine, tmp_path: object, monkeypatch: object) -> None:
    import os

    before = set(os.listdir("/tmp"))
    data = layer(file("../../tmp/hg-escape-test", EICAR), Entry("tmp/dev", type=tarfile.CHRTYPE))
    walk_layer(io.BytesIO(data), engine)
    assert set(os.listdir("/tmp")) - before == set()
