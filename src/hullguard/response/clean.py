"""Deleting an infected file without ever following a symlink or leaving the scanned root.

A path string is not safe to delete by: between the scan and the unlink, any directory on
the way may have been replaced by a symlink (to ``/etc``, say), and ``unlink(path)`` would
follow it. So the deletion walks from the root with one ``O_NOFOLLOW`` directory fd per
component and unlinks the last name relative to its parent fd. With ``expect`` the file must
still be the inode that was scanned.

The one window left is between the final ``lstat`` and ``unlinkat`` on a parent fd that is
already pinned: only a name in that very directory can be swapped, which the swapper could
delete themselves, and it can never be outside the root. Linux has no "unlink this fd" call
that would close it.
"""

from __future__ import annotations

import contextlib
import os
import stat

from hullguard.response.actions import Action

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_relpath(relpath: bytes) -> list[bytes] | None:
    """The components of a path below a root, or None when it could climb out or is empty."""
    parts = [p for p in relpath.split(b"/") if p]
    if not parts or any(p in (b".", b"..") for p in parts):
        return None
    return parts


def delete_in_root(root: bytes, relpath: bytes, *, expect: tuple[int, int] | None = None) -> Action:
    """Unlink ``relpath`` below ``root``; CLEANED_BY_DELETING or CLEAN_FAILED, never raises OSError.

    ``expect`` is the ``(st_dev, st_ino)`` of the file that was scanned; anything else found
    under that name (another file, a symlink, a directory) is left alone.
    """
    parts = split_relpath(relpath)
    if parts is None:
        return Action.CLEAN_FAILED
    fds: list[int] = []
    try:
        fd = os.open(root, _DIR_FLAGS)
        fds.append(fd)
        for part in parts[:-1]:
            fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            fds.append(fd)
        name = parts[-1]
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return Action.CLEAN_FAILED
        if expect is not None and (st.st_dev, st.st_ino) != expect:
            return Action.CLEAN_FAILED
        os.unlink(name, dir_fd=fd)
        return Action.CLEANED_BY_DELETING
    except OSError:
        return Action.CLEAN_FAILED
    finally:
        for opened in fds:
            with contextlib.suppress(OSError):
                os.close(opened)
