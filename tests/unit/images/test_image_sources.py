"""Whole images from crafted archives and OCI layouts: order, hidden files, digests, cache."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hullguard.engine.verdict import NotScannedReason, VerdictKind
from hullguard.objects.images.api import ImageTarget, scan_archive_file
from hullguard.objects.images.archive import ArchiveStreamScan, IterReader
from hullguard.objects.images.blobstore import scan_oci_dir
from hullguard.objects.images.digest import Readable
from hullguard.objects.images.manifest import ImageError, Platform
from hullguard.objects.images.model import HIDDEN_TEXT, ImageReport
from hullguard.objects.images.scanner import ImageScanner
from imagebuild import (
    EICAR,
    Image,
    directory,
    file,
    layer,
    legacy_archive,
    oci_archive,
    opaque,
    sha,
    targz,
    whiteout,
    write_oci_dir,
)

BASE = layer(directory("bin"), file("bin/tool", b"\x7fELF clean tool"), file("etc/os-release", b"ID=test\n"))
TOP_EICAR = layer(file("srv/eicar.com", EICAR))
GZ_INSIDE = layer(file("opt/bundle.tar.gz", targz("payload/eicar.com", EICAR)))
DELETES = layer(whiteout("srv/eicar.com"))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def det(report: ImageReport) -> list[tuple[int, str, bool]]:
    return [(f.layer_index, f.path, f.hidden) for f in report.detections]


def test_legacy_archive_layers_in_manifest_order(scanner: ImageScanner, tmp_path: Path) -> None:
    img = Image([BASE, TOP_EICAR, GZ_INSIDE], tag="hgtest/a:1")
    report = scan_archive_file(scanner, write(tmp_path, "a.tar", legacy_archive([img])))
    assert [layer.diff_id for layer in report.layers] == [sha(BASE), sha(TOP_EICAR), sha(GZ_INSIDE)]
    assert det(report) == [(1, "/srv/eicar.com", False), (2, "/opt/bundle.tar.gz", False)]
    f = report.detections[1]
    assert str(f.uri) == f"docker-image://hgtest/a:1@{sha(GZ_INSIDE)}/opt/bundle.tar.gz!/payload/eicar.com"
    assert f.verdict.detail.startswith(f"layer 2 {sha(GZ_INSIDE)}")
    assert not report.not_scanned
    assert report.ref.image_id.startswith("sha256:")


def test_hidden_in_history_by_whiteout(scanner: ImageScanner, tmp_path: Path) -> None:
    img = Image([BASE, TOP_EICAR, DELETES])
    report = scan_archive_file(scanner, write(tmp_path, "h.tar", legacy_archive([img])))
    [f] = report.detections
    assert (f.layer_index, f.path, f.hidden_by) == (1, "/srv/eicar.com", 2)
    assert HIDDEN_TEXT in f.verdict.detail and "deleted by a whiteout in layer 2" in f.verdict.detail


@pytest.mark.parametrize(("later", "how"), [
    (layer(opaque("srv")), "its directory made opaque"),
    (layer(file("srv/eicar.com", b"clean now")), "replaced"),
    (layer(file("srv", b"a file where the directory was")), "a parent directory replaced"),
    (layer(whiteout("srv")), "deleted by a whiteout"),
])
def test_hidden_in_history_other_ways(scanner: ImageScanner, tmp_path: Path, later: bytes, how: str) -> None:
    report = scan_archive_file(scanner, write(tmp_path, "h.tar", legacy_archive([Image([TOP_EICAR, later])])))
    [f] = report.detections
    assert f.hidden_by == 1 and f.hidden_how == how


def test_not_hidden_when_the_whiteout_is_below(scanner: ImageScanner, tmp_path: Path) -> None:
    report = scan_archive_file(scanner, write(tmp_path, "h.tar", legacy_archive([Image([DELETES, TOP_EICAR])])))
    assert det(report) == [(1, "/srv/eicar.com", False)]


def test_oci_archive_with_and_without_legacy_manifest(scanner: ImageScanner, tmp_path: Path) -> None:
    img = Image([BASE, TOP_EICAR, DELETES], tag="hgtest/o:2")
    for legacy in (True, False):
        for gz in (False, True):
            data = oci_archive([img], with_legacy_manifest=legacy, gzip_layers=gz)
            report = scan_archive_file(scanner, write(tmp_path, f"o{legacy}{gz}.tar", data), want="hgtest/o:2")
            assert det(report) == [(1, "/srv/eicar.com", True)], (legacy, gz)
            assert not report.not_scanned


def test_gzip_compressed_archive_file(scanner: ImageScanner, tmp_path: Path) -> None:
    data = gzip.compress(legacy_archive([Image([TOP_EICAR])]))
    report = scan_archive_file(scanner, write(tmp_path, "a.tar.gz", data))
    assert det(report) == [(0, "/srv/eicar.com", False)]


def test_oci_dir_platform_choice_and_nested_index(scanner: ImageScanner, tmp_path: Path) -> None:
    amd = Image([BASE, TOP_EICAR], tag="multi:1", arch="amd64")
    arm = Image([BASE], tag="multi:1", arch="arm64")
    for nested in (False, True):
        d = tmp_path / f"oci{nested}"
        write_oci_dir(d, [amd, arm], gzip_layers=True, nested=nested)
        r_amd = scan_oci_dir(scanner, d, platform=Platform.parse("linux/amd64"))
        assert det(r_amd) == [(1, "/srv/eicar.com", False)]
        r_arm = scan_oci_dir(scanner, d, platform=Platform.parse("linux/arm64"))
        assert det(r_arm) == [] and len(r_arm.layers) == 1
        with pytest.raises(ImageError, match="no image for platform linux/s390x"):
            scan_oci_dir(scanner, d, platform=Platform.parse("linux/s390x"))


def test_oci_dir_missing_layer_blob(scanner: ImageScanner, tmp_path: Path) -> None:
    img = Image([BASE, TOP_EICAR])
    gone = sha(TOP_EICAR)
    write_oci_dir(tmp_path / "o", [img], drop={gone})
    report = scan_oci_dir(scanner, tmp_path / "o")
    [bad] = report.not_scanned
    assert bad.layer_index == 1 and bad.verdict.reason is NotScannedReason.UNREADABLE
    assert "missing" in bad.verdict.detail and report.layers[1].status == "missing"


def test_oci_dir_missing_config_is_an_error(scanner: ImageScanner, tmp_path: Path) -> None:
    img = Image([BASE])
    write_oci_dir(tmp_path / "o", [img], drop={sha(img.config())})
    with pytest.raises(ImageError, match="missing"):
        scan_oci_dir(scanner, tmp_path / "o")


def test_oci_dir_blob_that_does_not_match_its_digest(scanner: ImageScanner, tmp_path: Path) -> None:
    img = Image([BASE, layer(file("clean", b"x"))])
    d = tmp_path / "o"
    write_oci_dir(d, [img])
    # swap the second layer's bytes for an infected layer under the same name
    (d / "blobs" / "sha256" / sha(img.layers[1]).split(":")[1]).write_bytes(TOP_EICAR)
    report = scan_oci_dir(scanner, d)
    assert det(report) == [(1, "/srv/eicar.com", False)]
    problems = [f.verdict.detail for f in report.not_scanned]
    assert any("does not match the config's diff_id" in p for p in problems)
    assert any("does not match the manifest's" in p for p in problems)


def test_diff_id_mismatch_in_archive_is_reported(scanner: ImageScanner, tmp_path: Path) -> None:
    img = Image([BASE], diff_ids=["sha256:" + "0" * 64])
    report = scan_archive_file(scanner, write(tmp_path, "m.tar", legacy_archive([img])))
    [bad] = report.not_scanned
    assert bad.verdict.reason is NotScannedReason.CORRUPT
    assert "does not match the config's diff_id sha256:000" in bad.verdict.detail


def test_archive_missing_layer_and_truncated_archive(scanner: ImageScanner, tmp_path: Path) -> None:
    img = Image([BASE, TOP_EICAR])
    report = scan_archive_file(scanner, write(tmp_path, "m.tar", legacy_archive([img], skip_layers={1})))
    [bad] = report.not_scanned
    assert bad.layer_index == 1 and "missing from the archive" in bad.verdict.detail
    full = legacy_archive([img])
    with pytest.raises(ImageError, match=r"corrupt or truncated|no manifest"):
        scan_archive_file(scanner, write(tmp_path, "t.tar", full[: len(full) // 2]))
    with pytest.raises(ImageError, match=r"not a readable image archive|no manifest"):
        scan_archive_file(scanner, write(tmp_path, "g.tar", b"this is not a tar" * 100))


def test_several_images_in_one_archive_need_a_name(scanner: ImageScanner, tmp_path: Path) -> None:
    p = write(tmp_path, "two.tar", legacy_archive([Image([BASE], tag="a:1"), Image([TOP_EICAR], tag="b:1")]))
    with pytest.raises(ImageError, match="holds 2 images; name one: a:1, b:1"):
        scan_archive_file(scanner, p)
    assert det(scan_archive_file(scanner, p, want="b:1")) == [(0, "/srv/eicar.com", False)]


def test_manifest_garbage_is_a_clear_error(scanner: ImageScanner, tmp_path: Path) -> None:
    d = tmp_path / "o"
    write_oci_dir(d, [Image([BASE])])
    (d / "index.json").write_text(json.dumps({"manifests": [{"digest": "../../etc/passwd"}]}))
    with pytest.raises(ImageError, match="not a valid content digest"):
        scan_oci_dir(scanner, d)


def test_warm_rescan_uses_the_cache_and_shared_layers(scanner: ImageScanner, tmp_path: Path) -> None:
    p1 = write(tmp_path, "1.tar", legacy_archive([Image([BASE, TOP_EICAR, DELETES])]))
    cold = scan_archive_file(scanner, p1)
    assert [layer.status for layer in cold.layers] == ["scanned"] * 3
    warm = scan_archive_file(scanner, p1)
    assert [layer.status for layer in warm.layers] == ["cached"] * 3
    assert det(warm) == det(cold) == [(1, "/srv/eicar.com", True)]
    assert warm.detections[0].verdict.detail == cold.detections[0].verdict.detail
    other = write(tmp_path, "2.tar", legacy_archive([Image([BASE, GZ_INSIDE])]))
    shared = scan_archive_file(scanner, other)
    assert [layer.status for layer in shared.layers] == ["cached", "scanned"]
    # the OCI dir of the same image: layers recognised by diff_id, verified by hashing
    write_oci_dir(tmp_path / "o", [Image([BASE, TOP_EICAR, DELETES])], gzip_layers=True)
    r = scan_oci_dir(scanner, tmp_path / "o")
    assert [layer.status for layer in r.layers] == ["cached"] * 3 and det(r) == det(cold)


def test_cache_is_not_trusted_for_other_bytes(scanner: ImageScanner, tmp_path: Path) -> None:
    clean = layer(file("clean", b"x"))
    write_oci_dir(tmp_path / "a", [Image([clean])])
    assert scan_oci_dir(scanner, tmp_path / "a").layers[0].status == "scanned"
    # same config (claims the clean diff_id), but the blob holds EICAR: must be scanned, not cached
    d = tmp_path / "b"
    write_oci_dir(d, [Image([clean])])
    (d / "blobs" / "sha256" / sha(clean).split(":")[1]).write_bytes(TOP_EICAR)
    r = scan_oci_dir(scanner, d)
    assert r.layers[0].status == "scanned" and det(r) == [(0, "/srv/eicar.com", False)]


def test_results_depend_on_signature_version(engine: object, cache: object, tmp_path: Path) -> None:
    from hullguard.engine.engine import Engine
    from hullguard.objects.layercache import LayerCache

    assert isinstance(engine, Engine) and isinstance(cache, LayerCache)
    p = write(tmp_path, "1.tar", legacy_archive([Image([TOP_EICAR])]))
    scan_archive_file(ImageScanner(engine, cache), p)
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    (sigs / "extra.hsb").write_text(f"{'0' * 64}:5:Test.Other\n")
    other = Engine.load([sigs])
    assert other.db_version != engine.db_version
    r = scan_archive_file(ImageScanner(other, cache), p)
    assert r.layers[0].status == "scanned"


def test_same_head_different_tail_is_confirmed_by_a_second_pass(scanner: ImageScanner, tmp_path: Path) -> None:
    big = b"A" * (2 << 20)
    clean = layer(file("blob", big + b"clean!"))
    infected = layer(file("blob", big + b"clean!"), file("z", EICAR))
    # equal size, equal first MiB: the cache's hint matches, the full hash does not
    infected_same = layer(file("blob", big + b"CLEAN!"))
    assert len(clean) == len(infected_same)
    scan_archive_file(scanner, write(tmp_path, "1.tar", legacy_archive([Image([clean])])))
    r = scan_archive_file(scanner, write(tmp_path, "2.tar", legacy_archive([Image([infected_same])])))
    assert r.layers[0].status == "scanned" and r.layers[0].diff_id == sha(infected_same)
    r2 = scan_archive_file(scanner, write(tmp_path, "3.tar", legacy_archive([Image([infected])])))
    assert det(r2) == [(0, "/z", False)]


def test_stream_from_chunks_like_the_docker_sdk(scanner: ImageScanner) -> None:
    data = legacy_archive([Image([BASE, TOP_EICAR], tag="s:1")])

    @contextmanager
    def opener() -> Iterator[Readable]:
        yield IterReader(data[i:i + 7000] for i in range(0, len(data), 7000))

    report = ArchiveStreamScan(scanner, opener, source="docker", name="s:1").run()
    assert det(report) == [(1, "/srv/eicar.com", False)]
    assert str(report.detections[0].uri).startswith("docker-image://s:1@sha256:")


def test_target_parsing() -> None:
    assert ImageTarget.parse("image:nginx:1.27") == ImageTarget("image:nginx:1.27", "image", "nginx:1.27")
    assert ImageTarget.parse("/srv/image:x") is None
    assert ImageTarget.parse("container:web") is None
    with pytest.raises(ImageError, match="nothing after 'oci:'"):
        ImageTarget.parse("oci:")


def test_no_engine_scan_without_cache(engine: object, tmp_path: Path) -> None:
    from hullguard.engine.engine import Engine

    assert isinstance(engine, Engine)
    s = ImageScanner(engine, None)
    r = scan_archive_file(s, write(tmp_path, "a.tar", legacy_archive([Image([TOP_EICAR])])))
    assert det(r) == [(0, "/srv/eicar.com", False)]
    assert r.detections[0].verdict.kind is VerdictKind.DETECTED
