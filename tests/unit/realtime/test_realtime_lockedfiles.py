"""LockedFiles: descriptors of the agent's locked files are parked, never closed; marks are placed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hullguard.realtime.fanotify import FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_REMOVE, FanotifyError
from hullguard.realtime.lockedfiles import LockedFiles, sqlite_files


class FakeFan:
    """Records fanotify_mark calls; the first add of each path may fail with EEXIST."""

    def __init__(self, exists: bool = False) -> None:
        self.calls: list[tuple[int, int, bytes | None]] = []
        self.exists = exists

    def mark(self, flags: int, mask: int, dirfd: int = -100, path: bytes | None = None) -> None:
        self.calls.append((flags, mask, path))
        if self.exists and not flags & FAN_MARK_REMOVE:
            self.exists = False
            raise FanotifyError(errno.EEXIST, "exists")


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_locked_files_descriptor_is_parked_and_others_are_closed(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    db.write_bytes(b"x")
    (tmp_path / "journal.db-wal").write_bytes(b"")
    other = tmp_path / "other"
    other.write_bytes(b"y")
    fan = FakeFan()
    locked = LockedFiles(fan, 0x8)  # type: ignore[arg-type]
    locked.add(sqlite_files(db))  # -shm does not exist: skipped
    assert len(locked) == 2
    assert [c[2] for c in fan.calls] == [os.fsencode(db), os.fsencode(f"{db}-wal")]
    assert all(c[0] & FAN_MARK_IGNORED_SURV_MODIFY for c in fan.calls)
    mine, theirs = os.open(db, os.O_RDONLY), os.open(other, os.O_RDONLY)
    locked.close(mine)
    locked.close(theirs)
    assert _is_open(mine) and not _is_open(theirs)
    assert locked.parked == 1
    locked.remark()
    assert len(fan.calls) == 4
    locked.release()
    assert not _is_open(mine) and locked.parked == 0


def test_an_evictable_verdict_mark_on_the_inode_is_replaced(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    db.write_bytes(b"x")
    fan = FakeFan(exists=True)
    LockedFiles(fan, 0x8).add([str(db)])  # type: ignore[arg-type]
    kinds = [bool(c[0] & FAN_MARK_REMOVE) for c in fan.calls]
    assert kinds == [False, True, False]
