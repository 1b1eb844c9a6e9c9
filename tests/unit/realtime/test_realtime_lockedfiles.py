"""LockedFiles against a real fanotify group: permanent ignore marks, and parked descriptors.

The marks are read back from ``/proc/self/fdinfo/<group fd>``, where the kernel lists each
inode mark with its flags and ignore mask. Needs root (fanotify_init), as the suite does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hullguard.realtime.fanotify import (
    FAN_CLOSE_WRITE,
    FAN_MARK_EVICTABLE,
    FAN_MARK_IGNORED_SURV_MODIFY,
    FAN_OPEN_PERM,
    Fanotify,
)
from hullguard.realtime.lockedfiles import LockedFiles, sqlite_files

MASK = FAN_OPEN_PERM | FAN_CLOSE_WRITE


@pytest.fixture
def fan() -> Iterator[Fanotify]:
    group = Fanotify.for_content()
    try:
        yield group
    finally:
        group.close()


def inode_marks(fan: Fanotify) -> dict[int, tuple[int, int]]:
    """inode number -> (mark flags, ignore mask), as the kernel reports them."""
    marks = {}
    for line in Path(f"/proc/self/fdinfo/{fan.fd}").read_text().splitlines():
        if line.startswith("fanotify ino:"):
            fields = dict(f.split(":", 1) for f in line.split()[1:])
            marks[int(fields["ino"], 16)] = (int(fields["mflags"], 16), int(fields["ignored_mask"], 16))
    return marks


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_existing_files_get_permanent_ignore_marks_again_after_a_flush(fan: Fanotify, tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    db.write_bytes(b"x")
    (tmp_path / "journal.db-wal").write_bytes(b"")
    locked = LockedFiles(fan, MASK)
    locked.add(sqlite_files(db))  # there is no -shm: skipped
    inodes = {db.stat().st_ino, (tmp_path / "journal.db-wal").stat().st_ino}
    marks = inode_marks(fan)
    assert set(marks) == inodes
    assert all(flags & FAN_MARK_IGNORED_SURV_MODIFY and not flags & FAN_MARK_EVICTABLE and ignored == MASK
               for flags, ignored in marks.values()), marks
    fan.flush_ignores()
    assert inode_marks(fan) == {}
    locked.remark()
    assert set(inode_marks(fan)) == inodes


def test_an_evictable_verdict_mark_on_the_inode_becomes_permanent(fan: Fanotify, tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    db.write_bytes(b"x")
    fd = os.open(db, os.O_RDONLY)
    try:
        fan.ignore(fd, FAN_OPEN_PERM)  # what a clean verdict leaves on the inode
    finally:
        os.close(fd)
    assert inode_marks(fan)[db.stat().st_ino][0] & FAN_MARK_EVICTABLE
    LockedFiles(fan, MASK).add([str(db)])
    flags, ignored = inode_marks(fan)[db.stat().st_ino]
    assert flags & FAN_MARK_IGNORED_SURV_MODIFY and not flags & FAN_MARK_EVICTABLE and ignored == MASK


def test_a_locked_files_descriptor_is_parked_and_others_are_closed(fan: Fanotify, tmp_path: Path) -> None:
    db, other = tmp_path / "journal.db", tmp_path / "other"
    db.write_bytes(b"x")
    other.write_bytes(b"y")
    locked = LockedFiles(fan, MASK)
    locked.add([str(db)])
    st = db.stat()
    mine, known, theirs = (os.open(p, os.O_RDONLY) for p in (db, db, other))
    locked.close(mine)
    locked.close(known, (st.st_dev, st.st_ino))  # the caller's inode: no fstat
    locked.close(theirs)
    assert is_open(mine) and is_open(known) and not is_open(theirs)
    assert locked.parked == 2 and (st.st_dev, st.st_ino) in locked
    locked.release()
    assert not is_open(mine) and not is_open(known) and locked.parked == 0
