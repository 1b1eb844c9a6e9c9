"""The host walker: never follows symlinks, never hangs on special files, keeps raw names."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from hullguard.engine.verdict import NotScannedReason
from hullguard.objects import hostfs
from hullguard.objects.hostfs import (
    DirFiles,
    Excluder,
    SkipReason,
    WalkProblem,
    WalkStats,
    open_dir_beneath,
    open_file_at,
    reason_for,
    walk_tree,
)


def files_of(root: Path, start: bytes = b"", **kw: object) -> tuple[set[bytes], list[WalkProblem], WalkStats]:
    stats = WalkStats()
    found: set[bytes] = set()
    problems: list[WalkProblem] = []
    for item in walk_tree(os.fsencode(root), start, stats=stats, **kw):  # type: ignore[arg-type]
        if isinstance(item, DirFiles):
            found.update(hostfs.join(item.reldir, n) for n in item.names)
        else:
            problems.append(item)
    return found, problems, stats


def test_walks_recursively_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b" / "x").write_text("x")
    (tmp_path / "b" / "c" / "y").write_text("y")
    found, problems, stats = files_of(tmp_path)
    assert found == {b"a.txt", b"b/x", b"b/c/y"}
    assert problems == []
    assert stats.directories == 3


def test_symlink_to_etc_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "etc-link").symlink_to("/etc")
    (tmp_path / "passwd-link").symlink_to("/etc/passwd")
    (tmp_path / "real").write_text("r")
    found, _, stats = files_of(tmp_path)
    assert found == {b"real"}
    assert stats.skipped[SkipReason.SYMLINK] == 2


def test_symlink_loop_is_harmless(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "loop").symlink_to("..")
    (tmp_path / "self").symlink_to("self")
    (tmp_path / "d" / "f").write_text("f")
    found, problems, _ = files_of(tmp_path)
    assert found == {b"d/f"}
    assert problems == []


def test_fifo_and_socket_skipped_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        found, _, stats = files_of(tmp_path)
    finally:
        sock.close()
    assert found == set()
    assert stats.skipped[SkipReason.SPECIAL] == 2


def test_fifo_swapped_in_after_walk_opens_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_file_at(dfd, b"f")  # O_NONBLOCK: returns at once although no writer exists
        try:
            assert not os.path.isfile(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def test_non_utf8_name_kept_as_bytes(tmp_path: Path) -> None:
    raw = b"caf\xe9-\xff.bin"
    with open(os.fsencode(tmp_path) + b"/" + raw, "wb") as fh:
        fh.write(b"data")
    found, _, _ = files_of(tmp_path)
    assert found == {raw}


def test_excludes_match_full_path_and_basename(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "big").write_text("x")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "a.log").write_text("x")
    (tmp_path / "keep" / "a.txt").write_text("x")
    excl = Excluder([f"{tmp_path}/cache", "*.log"])
    found, _, stats = files_of(tmp_path, excluder=excl)
    assert found == {b"keep/a.txt"}
    assert stats.skipped[SkipReason.EXCLUDED] == 2


def test_start_below_root_walks_only_that(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "in").write_text("x")
    (tmp_path / "out").write_text("x")
    found, _, _ = files_of(tmp_path, b"sub")
    assert found == {b"sub/in"}
    found, _, _ = files_of(tmp_path, b"out")
    assert found == {b"out"}


def test_vanished_start_is_a_problem(tmp_path: Path) -> None:
    _, problems, _ = files_of(tmp_path, b"gone")
    assert [(p.relpath, p.reason) for p in problems] == [(b"gone", NotScannedReason.VANISHED)]


def test_unreadable_directory_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "f").write_text("x")
    (tmp_path / "ok").write_text("x")
    real_open = os.open

    def deny(path: object, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == b"secret":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)  # type: ignore[arg-type]

    monkeypatch.setattr(hostfs.os, "open", deny)
    found, problems, _ = files_of(tmp_path)
    assert found == {b"ok"}
    assert [(p.relpath, p.reason) for p in problems] == [(b"secret", NotScannedReason.UNREADABLE)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 directories")
def test_mode_000_directory_is_unreadable(tmp_path: Path) -> None:
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0)
    try:
        _, problems, _ = files_of(tmp_path)
    finally:
        d.chmod(0o755)
    assert problems and problems[0].reason is NotScannedReason.UNREADABLE


def test_open_dir_beneath_refuses_symlinked_component_and_dotdot(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(open_dir_beneath(root, b"real"))
        with pytest.raises(OSError) as exc:
            open_dir_beneath(root, b"link")
        assert reason_for(exc.value) is NotScannedReason.SYMLINK
        with pytest.raises(OSError) as exc:
            open_dir_beneath(root, b"real/../..")
        assert reason_for(exc.value) is NotScannedReason.OUT_OF_ROOT
    finally:
        os.close(root)


def test_deep_nesting_reports_instead_of_exhausting_fds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostfs, "MAX_DIR_DEPTH", 5)
    d = tmp_path
    for i in range(8):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    (d / "deep").write_text("x")
    found, problems, _ = files_of(tmp_path)
    assert found == set()
    assert len(problems) == 1 and "deeper than 5" in problems[0].detail


def test_no_fd_leak(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_text("x")
    before = len(os.listdir("/proc/self/fd"))
    files_of(tmp_path)
    gen = walk_tree(os.fsencode(tmp_path))
    next(gen)
    gen.close()  # abandoned half-way
    assert len(os.listdir("/proc/self/fd")) == before


def test_reason_mapping() -> None:
    assert reason_for(FileNotFoundError(errno.ENOENT, "x")) is NotScannedReason.VANISHED
    assert reason_for(PermissionError(errno.EACCES, "x")) is NotScannedReason.UNREADABLE
    assert reason_for(OSError(errno.ELOOP, "x")) is NotScannedReason.SYMLINK
    assert reason_for(OSError(errno.ENOSPC, "x")) is NotScannedReason.ERROR
