"""Opening and walking host directory trees safely.

Everything below a scan root is reached through directory file descriptors opened with
``O_NOFOLLOW``, one component at a time, never through a path string: a symlink anywhere in
the tree is never followed (so a link to ``/etc`` or a symlink loop is harmless), and a
directory swapped for a symlink between walking and scanning makes the open fail instead of
leading out of the root. Files are opened with ``O_NONBLOCK`` and checked with ``fstat``
after the open, so a FIFO or device swapped in for a regular file cannot hang a scan.

Names are ``bytes`` end to end: a file name that is not UTF-8 is scanned, deleted and
reported under its real bytes (``ObjectURI`` keeps it with ``surrogateescape``).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import stat
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from hullguard.engine.verdict import NotScannedReason

FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NOATIME = getattr(os, "O_NOATIME", 0)
"""Scanning should not change atimes; the kernel refuses O_NOATIME (EPERM) on files we do
not own without CAP_FOWNER, so every open falls back to plain flags."""
MAX_DIR_DEPTH = 1000
"""Directory levels walked below a root; each level holds one fd while its subtree is walked."""


class SkipReason(StrEnum):
    """Objects left out on purpose: counted and summarised, never failures."""

    SPECIAL = "special file (FIFO, socket or device)"
    SYMLINK = "symbolic link (not followed)"
    EXCLUDED = "excluded"
    OTHER_FS = "on another file system"
    TOO_LARGE = "larger than --max-size"
    LOOP = "directory loop (bind mount)"


def _open_noatime(name: bytes, flags: int, dir_fd: int | None) -> int:
    if NOATIME:
        try:
            return os.open(name, flags | NOATIME, dir_fd=dir_fd)
        except PermissionError:
            pass
    return os.open(name, flags, dir_fd=dir_fd)


def open_file_at(dir_fd: int, name: bytes) -> int:
    """Open a regular file by name relative to a directory fd, never through a symlink."""
    return _open_noatime(name, FILE_FLAGS, dir_fd)


def open_dir_at(dir_fd: int | None, name: bytes) -> int:
    """Open a directory by name relative to ``dir_fd`` (an absolute path when None), not following it.

    ``O_DIRECTORY|O_NOFOLLOW`` on a symlink fails with ``ENOTDIR``; that case is re-raised as
    ``ELOOP`` so it is reported as a symlink, not as a vanished directory.
    """
    try:
        return _open_noatime(name, DIR_FLAGS, dir_fd)
    except NotADirectoryError:
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            raise OSError(errno.ELOOP, "is a symbolic link (not followed)", name) from None
        raise


def open_dir_beneath(root_fd: int, relpath: bytes) -> int:
    """A directory below ``root_fd``, opened component by component with ``O_NOFOLLOW``.

    ``relpath`` empty means the root itself (a new fd). Raises ``OSError`` (``ELOOP`` when a
    component is a symlink, ``EXDEV`` for ``..``).
    """
    fd = os.dup(root_fd)
    try:
        for part in relpath.split(b"/"):
            if not part or part == b".":
                continue
            if part == b"..":
                raise OSError(errno.EXDEV, "'..' in a path below the root", relpath)
            nxt = open_dir_at(fd, part)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def reason_for(exc: OSError) -> NotScannedReason:
    """The not-scanned reason a failed open or read stands for."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE):
        return NotScannedReason.VANISHED
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EIO, errno.ENXIO):
        return NotScannedReason.UNREADABLE
    if exc.errno == errno.ELOOP:
        return NotScannedReason.SYMLINK
    if exc.errno == errno.EXDEV:
        return NotScannedReason.OUT_OF_ROOT
    return NotScannedReason.ERROR


def join(*parts: bytes) -> bytes:
    """Join path parts with single slashes, ignoring empty parts (``join(b"/", b"", b"a")`` is ``/a``)."""
    out = b""
    for part in parts:
        if not part:
            continue
        if not out:
            out = part
        elif out.endswith(b"/"):
            out += part.lstrip(b"/")
        else:
            out += b"/" + part.lstrip(b"/")
    return out


@dataclass(frozen=True)
class RootedFile:
    """A file located by its walk root and the path below it, plus the inode that was scanned.

    Deleting or quarantining goes through the root again (:mod:`hullguard.response.clean`),
    so these four values are all that is needed, and they pickle cheaply.
    """

    root: bytes
    relpath: bytes
    dev: int
    ino: int

    @property
    def path(self) -> bytes:
        return join(self.root, self.relpath)


class Excluder:
    """Shell-style globs matched against the full path and against the base name.

    ``*`` matches ``/`` as well (``fnmatch`` semantics), so ``/srv/cache/*`` excludes a whole
    subtree and ``*.log`` any log file; an excluded directory is not entered.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._regexes = [re.compile(fnmatch.translate(p), re.DOTALL) for p in self.patterns]

    def __bool__(self) -> bool:
        return bool(self._regexes)

    def matches(self, full_path: bytes, name: bytes) -> bool:
        if not self._regexes:
            return False
        full, base = os.fsdecode(full_path), os.fsdecode(name)
        return any(r.match(full) or r.match(base) for r in self._regexes)


@dataclass(frozen=True)
class DirFiles:
    """Regular-looking files of one directory, to be opened by name below the directory."""

    reldir: bytes
    dev: int
    ino: int
    """Identity of the directory when walked; a scan worker refuses a different one."""
    names: tuple[bytes, ...]


@dataclass(frozen=True)
class WalkProblem:
    """Something under the root that could not be walked (a directory that vanished, EACCES)."""

    relpath: bytes
    reason: NotScannedReason
    detail: str = ""


@dataclass
class WalkStats:
    skipped: dict[SkipReason, int] = field(default_factory=dict)
    directories: int = 0

    def skip(self, why: SkipReason, n: int = 1) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + n


@dataclass
class _Frame:
    fd: int
    reldir: bytes
    ident: tuple[int, int]
    pending: list[bytes]


def walk_tree(root: bytes, start: bytes = b"", *, one_file_system: bool = False,
              excluder: Excluder | None = None, path_prefix: bytes | None = None,
              stats: WalkStats | None = None) -> Iterator[DirFiles | WalkProblem]:
    """Walk ``root/start`` depth first; yield the files of each directory and what could not be walked.

    ``root`` is an absolute, already resolved directory; ``start`` a path below it (a
    directory, or one file when a file was named). ``path_prefix`` is what excludes see in
    front of the relative path (defaults to ``root``; container scans pass ``/``). Skips go
    to ``stats``. Symlinks are never followed, special files never yielded.
    """
    stats = stats if stats is not None else WalkStats()
    excluder = excluder or Excluder(())
    prefix = root if path_prefix is None else path_prefix
    try:
        root_fd = open_dir_at(None, root)
    except OSError as exc:
        yield WalkProblem(b"", reason_for(exc), exc.strerror or "")
        return
    try:
        root_st = os.fstat(root_fd)
        start_dir, _, start_name = start.rstrip(b"/").rpartition(b"/")
        try:
            parent_fd = open_dir_beneath(root_fd, start_dir)
        except OSError as exc:
            yield WalkProblem(start, reason_for(exc), exc.strerror or "")
            return
        try:
            if not start_name:
                first: tuple[int, os.stat_result] | None = (os.dup(parent_fd), os.fstat(parent_fd))
            else:
                first = yield from _classify_start(parent_fd, start, start_name, stats)
        finally:
            os.close(parent_fd)
        if first is None:
            return
        fd, st = first
        if one_file_system and st.st_dev != root_st.st_dev:
            os.close(fd)
            stats.skip(SkipReason.OTHER_FS)
            return
        yield from _walk_from(fd, start.strip(b"/"), st, root_st.st_dev, one_file_system,
                              excluder, prefix, stats)
    finally:
        os.close(root_fd)


def _classify_start(parent_fd: int, start: bytes, name: bytes, stats: WalkStats
                    ) -> Generator[DirFiles | WalkProblem, None, tuple[int, os.stat_result] | None]:
    """A named start below the root: one file (yielded) or a directory (returned open)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError as exc:
        yield WalkProblem(start, reason_for(exc), exc.strerror or "")
        return None
    if stat.S_ISREG(st.st_mode):
        pst = os.fstat(parent_fd)
        yield DirFiles(start.rpartition(b"/")[0].strip(b"/"), pst.st_dev, pst.st_ino, (name,))
        return None
    if stat.S_ISLNK(st.st_mode):
        stats.skip(SkipReason.SYMLINK)
        return None
    if not stat.S_ISDIR(st.st_mode):
        stats.skip(SkipReason.SPECIAL)
        return None
    try:
        fd = open_dir_at(parent_fd, name)
    except OSError as exc:
        yield WalkProblem(start, reason_for(exc), exc.strerror or "")
        return None
    return fd, os.fstat(fd)


def _walk_from(fd: int, reldir: bytes, st: os.stat_result, root_dev: int, one_file_system: bool,
               excluder: Excluder, prefix: bytes, stats: WalkStats) -> Iterator[DirFiles | WalkProblem]:
    stack: list[_Frame] = []
    try:
        found = _enter(stack, fd, reldir, (st.st_dev, st.st_ino), excluder, prefix, stats)
        if found is not None:
            yield found
        while stack:
            top = stack[-1]
            if not top.pending:
                os.close(stack.pop().fd)
                continue
            name = top.pending.pop()
            rel = join(top.reldir, name)
            if len(stack) >= MAX_DIR_DEPTH:
                yield WalkProblem(rel, NotScannedReason.ERROR,
                                  f"directory nesting deeper than {MAX_DIR_DEPTH} levels")
                continue
            try:
                sub = open_dir_at(top.fd, name)
            except OSError as exc:
                yield WalkProblem(rel, reason_for(exc), exc.strerror or "")
                continue
            sub_st = os.fstat(sub)
            ident = (sub_st.st_dev, sub_st.st_ino)
            if one_file_system and sub_st.st_dev != root_dev:
                os.close(sub)
                stats.skip(SkipReason.OTHER_FS)
                continue
            if any(f.ident == ident for f in stack):
                os.close(sub)
                stats.skip(SkipReason.LOOP)
                continue
            found = _enter(stack, sub, rel, ident, excluder, prefix, stats)
            if found is not None:
                yield found
    finally:
        for frame in stack:
            with contextlib.suppress(OSError):
                os.close(frame.fd)


def _enter(stack: list[_Frame], fd: int, reldir: bytes, ident: tuple[int, int], excluder: Excluder,
           prefix: bytes, stats: WalkStats) -> DirFiles | WalkProblem | None:
    """List one directory: push it (with its subdirectories pending) and return its files."""
    stats.directories += 1
    files: list[bytes] = []
    dirs: list[bytes] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                name = os.fsencode(entry.name)
                if excluder and excluder.matches(join(prefix, reldir, name), name):
                    stats.skip(SkipReason.EXCLUDED)
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append(name)
                    elif entry.is_file(follow_symlinks=False):
                        files.append(name)
                    elif entry.is_symlink():
                        stats.skip(SkipReason.SYMLINK)
                    else:
                        stats.skip(SkipReason.SPECIAL)
                except OSError:  # DT_UNKNOWN and the entry vanished before lstat
                    continue
    except OSError as exc:
        os.close(fd)
        return WalkProblem(reldir, reason_for(exc), exc.strerror or "")
    dirs.sort(reverse=True)  # popped from the end: visits in name order
    stack.append(_Frame(fd, reldir, ident, dirs))
    if not files:
        return None
    files.sort()
    return DirFiles(reldir, ident[0], ident[1], tuple(files))
