"""The on-demand scan with the real engine: records, policy, cleaning, not-scanned outcomes."""

from __future__ import annotations

import errno
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from hullguard.agent import ondemand
from hullguard.agent.config import EngineConfig
from hullguard.agent.ondemand import (
    Chunk,
    EngineFromConfig,
    FdScanner,
    ScanError,
    ScanOptions,
    ScanReport,
    run_scan,
    scan_chunk,
)
from hullguard.engine.verdict import NotScannedReason, ScanOutcome, VerdictKind
from hullguard.journal.record import Level, RecordKind, ScanSession
from hullguard.journal.store import JournalStore
from hullguard.objects import hostfs
from hullguard.objects.hostfs import DirFiles, SkipReason
from hullguard.objects.scanobject import ScanEvent
from hullguard.objects.targets import resolve_targets
from hullguard.response.actions import Action
from hullguard.response.policy import PolicyConfig

FACTORY = EngineFromConfig(EngineConfig())
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SHA1 = "3395856CE81F2B7382DEE72602F798B642F14140"


def scan(paths: list[Path], tmp: Path | None = None, *, clean: bool = False, workers: int = 1,
         journal: JournalStore | None = None, **kw: object) -> ScanReport:
    options = ScanOptions(workers=workers, policy=PolicyConfig().on_demand(clean=clean), **kw)  # type: ignore[arg-type]
    return run_scan(resolve_targets([str(p) for p in paths]), options, engine_factory=FACTORY,
                    journal=journal)


def test_clean_tree_exit_0(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("harmless")
    report = scan([tmp_path])
    assert (report.files, report.detections, report.exit_code) == (1, 0, 0)


def test_detection_record_fields_and_journal(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "eicar.com").write_bytes(EICAR)
    with JournalStore.open(tmp_path / "state" / "journal.db") as journal:
        report = scan([tmp_path / "sub"], journal=journal)
        (rec,) = report.records
        assert rec.kind is RecordKind.DETECTION
        assert rec.object == f"file://{tmp_path}/sub/eicar.com"
        assert (rec.module, rec.level, rec.action) == ("On-demand scan", Level.ERROR.value, "Retained")
        assert rec.process == "hullguard" and rec.event == ScanEvent.ON_DEMAND.value
        assert rec.user and rec.sha1 == EICAR_SHA1 and rec.info.startswith("@NAME=")
        assert report.exit_code == 50
        assert (tmp_path / "sub" / "eicar.com").exists()
        (stored,) = journal.query()
        assert stored.sha1 == EICAR_SHA1 and stored.session_id == report.session.id
        (session,) = journal.sessions()
        assert isinstance(session, ScanSession)
        assert (session.scanned, session.detections, session.cleaned, session.exit_code) == (1, 1, 0, 50)
        assert session.end is not None


def test_clean_deletes_file_and_whole_archive(tmp_path: Path) -> None:
    (tmp_path / "eicar.com").write_bytes(EICAR)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("inner/e.com", EICAR)
        z.writestr("inner/e2.com", EICAR)
    (tmp_path / "keep.txt").write_text("keep")
    report = scan([tmp_path], clean=True)
    assert report.detections == 3 and report.cleaned == 3 and report.exit_code == 1
    objects = sorted(r.object for r in report.records)
    assert objects == [f"file://{tmp_path}/a.zip!/inner/e.com", f"file://{tmp_path}/a.zip!/inner/e2.com",
                       f"file://{tmp_path}/eicar.com"]
    assert {r.action for r in report.records} == {Action.CLEANED_BY_DELETING.value}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_clean_refuses_replaced_file(tmp_path: Path) -> None:
    """The file is swapped (new inode) between scan and cleaning: left alone, exit 50."""
    (tmp_path / "eicar.com").write_bytes(EICAR)
    real_remediate = ondemand.remediate

    def swap_then_remediate(*args: object, **kw: object) -> object:
        (tmp_path / "other").write_text("innocent")
        os.rename(tmp_path / "other", tmp_path / "eicar.com")
        return real_remediate(*args, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ondemand, "remediate", swap_then_remediate)
        report = scan([tmp_path], clean=True)
    assert report.records[0].action == Action.CLEAN_FAILED.value
    assert report.exit_code == 50
    assert (tmp_path / "eicar.com").read_text() == "innocent"


def test_symlinked_target_file_is_scanned_but_links_inside_are_not(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "eicar.com").write_bytes(EICAR)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link-to-eicar").symlink_to(real / "eicar.com")
    (tree / "link-to-dir").symlink_to(real)
    report = scan([tree])
    assert report.detections == 0 and report.skipped[SkipReason.SYMLINK] == 2
    report = scan([tree / "link-to-eicar"])
    assert report.detections == 1
    assert report.records[0].object == f"file://{real}/eicar.com"


def test_max_size_and_excludes_are_skips_not_failures(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 5000)
    (tmp_path / "eicar.com").write_bytes(EICAR)
    report = scan([tmp_path], max_size=1000, exclude=("*.com",))
    assert report.skipped == {SkipReason.TOO_LARGE: 1, SkipReason.EXCLUDED: 1}
    assert report.exit_code == 0


def _chunk(tmp_path: Path, *names: bytes) -> Chunk:
    st = os.stat(tmp_path)
    root = os.fsencode(tmp_path)
    return Chunk(0, root, (st.st_dev, st.st_ino), 0, (DirFiles(b"", st.st_dev, st.st_ino, names),))


def test_vanished_fifo_and_unreadable_files_in_a_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ondemand.load_worker_engine(FACTORY)
    os.mkfifo(tmp_path / "fifo")  # swapped in after the walk: must not block
    (tmp_path / "locked").write_text("x")
    (tmp_path / "eicar.com").write_bytes(EICAR)
    real_open = os.open

    def deny(path: object, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == b"locked":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)  # type: ignore[arg-type]

    monkeypatch.setattr(hostfs.os, "open", deny)
    result = scan_chunk(_chunk(tmp_path, b"gone", b"fifo", b"locked", b"eicar.com"))
    reasons = {f.relpath: [v.reason or v.kind for v in f.verdicts] for f in result.findings}
    assert reasons == {b"gone": [NotScannedReason.VANISHED], b"locked": [NotScannedReason.UNREADABLE],
                       b"eicar.com": [VerdictKind.DETECTED]}
    assert result.skipped == {SkipReason.SPECIAL: 1}
    assert result.files == 1


def test_directory_replaced_between_walk_and_scan(tmp_path: Path) -> None:
    ondemand.load_worker_engine(FACTORY)
    (tmp_path / "d").mkdir()
    chunk = Chunk(0, os.fsencode(tmp_path), (os.stat(tmp_path).st_dev, os.stat(tmp_path).st_ino), 0,
                  (DirFiles(b"d", 0, 1, (b"f",)),))
    (finding,) = scan_chunk(chunk).findings
    assert finding.verdicts[0].reason is NotScannedReason.CHANGED
    (tmp_path / "d").rmdir()
    (tmp_path / "d").symlink_to("/etc")
    (finding,) = scan_chunk(chunk).findings
    assert finding.verdicts[0].reason is NotScannedReason.SYMLINK


@dataclass(frozen=True)
class GrowingEngine:
    """The real engine, plus a writer that appends to the file while it is being scanned."""

    def __call__(self) -> FdScanner:
        return _Growing(FACTORY())


class _Growing:
    def __init__(self, inner: FdScanner) -> None:
        self.inner = inner

    def scan_fd(self, fd: int, size: int | None = None) -> ScanOutcome:
        outcome = self.inner.scan_fd(fd, size)
        with open(f"/proc/self/fd/{fd}", "ab") as fh:
            fh.write(b"\n")
        return outcome


def test_changed_during_scan_still_reports_detection(tmp_path: Path) -> None:
    (tmp_path / "eicar.com").write_bytes(EICAR)
    options = ScanOptions(workers=1)
    report = run_scan(resolve_targets([str(tmp_path)]), options, engine_factory=GrowingEngine())
    kinds = sorted(r.kind.value for r in report.records)
    assert kinds == ["detection", "not_scanned"]
    assert any("changed" in r.info for r in report.records)
    assert report.exit_code == 50


@dataclass(frozen=True)
class BrokenFactory:
    def __call__(self) -> FdScanner:
        raise ValueError("bad.hdb:3: invalid signature")


@pytest.mark.parametrize("workers", [1, 2])
def test_engine_load_failure_is_a_scan_error(tmp_path: Path, workers: int) -> None:
    (tmp_path / "f").write_text("x")
    with JournalStore.open(tmp_path / "j.db") as journal:
        with pytest.raises(ScanError, match=r"bad\.hdb:3"):
            run_scan(resolve_targets([str(tmp_path)]), ScanOptions(workers=workers),
                     engine_factory=BrokenFactory(), journal=journal)
        (session,) = journal.sessions()
        assert session.exit_code == 100


def test_parallel_workers_find_everything(tmp_path: Path) -> None:
    for i in range(40):
        d = tmp_path / f"d{i % 5}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}").write_bytes(EICAR if i % 10 == 3 else b"clean %d" % i)
    report = scan([tmp_path], workers=2, chunk_files=3)
    assert report.files == 40 and report.detections == 4 and report.workers == 2
