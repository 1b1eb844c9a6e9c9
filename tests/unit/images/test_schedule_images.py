"""Scheduled scans take image targets, like `hullguard scan` (agent/imagescan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hullguard.agent.config import parse_config
from hullguard.agent.schedule import default_runner, parse_jobs
from hullguard.journal.record import Module
from hullguard.journal.store import JournalStore
from imagebuild import EICAR, Image, file, layer, legacy_archive, whiteout


def _config(tmp_path: Path, targets: list[str]):  # type: ignore[no-untyped-def]
    return parse_config({"state_dir": str(tmp_path / "state"), "scan": {"workers": 1},
                         "schedule": {"jobs": {"img": {"cron": "* * * * *", "targets": targets}}}})


def test_image_and_path_targets_in_one_job(tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    archive.write_bytes(legacy_archive([Image([
        layer(file("srv/eicar.com", EICAR), file("srv/ok.txt", b"fine\n")),
        layer(whiteout("srv/eicar.com")),
    ], tag="hgtest/sched:1")]))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "eicar.com").write_bytes(EICAR)
    cfg = _config(tmp_path, [str(tree), f"docker-archive:{archive}"])
    [job] = parse_jobs(cfg.schedule)
    report = default_runner(cfg)(job)
    assert report.detections == 2 and report.exit_code == 50
    with JournalStore.open(cfg.journal_path) as journal:
        sessions = journal.sessions()
        assert sorted(s.targets[0] for s in sessions) == sorted([str(tree), f"docker-archive:{archive}"])
        image_session = next(s for s in sessions if s.targets[0].startswith("docker-archive:"))
        assert image_session.module == Module.IMAGE.value
        assert image_session.detections == 1 and "(schedule img)" in image_session.user
        [rec] = [r for r in journal.query() if r.object.startswith("docker-image://")]
        assert rec.object.endswith("/srv/eicar.com") and "hidden in image history" in rec.info
    # a second run answers from the layer cache: same finding
    assert default_runner(cfg)(job).detections == 2


def test_image_only_job_and_a_bad_image_target(tmp_path: Path) -> None:
    archive = tmp_path / "clean.tar"
    archive.write_bytes(legacy_archive([Image([layer(file("a.txt", b"a\n"))])]))
    cfg = _config(tmp_path, [f"docker-archive:{archive}"])
    [job] = parse_jobs(cfg.schedule)
    report = default_runner(cfg)(job)
    assert report.exit_code == 0 and report.files >= 1
    missing = _config(tmp_path, [f"docker-archive:{tmp_path / 'missing.tar'}"])
    [bad] = parse_jobs(missing.schedule)
    report = default_runner(missing)(bad)
    assert report.exit_code == 10  # an unreadable image is a reported "not scanned", as in the CLI
    bad_text = _config(tmp_path, ["oci:"])
    [worse] = parse_jobs(bad_text.schedule)
    with pytest.raises(ValueError):
        default_runner(bad_text)(worse)
    with JournalStore.open(cfg.journal_path) as journal:
        assert any("could not start" in r.info for r in journal.query(module="Agent"))
