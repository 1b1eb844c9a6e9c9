"""User names inside containers: uid -> name from the container's own ``/etc/passwd``.

A container's ``/etc/passwd`` is the container's to shape: it may be a symlink aimed at the
host's files or a FIFO. It is read below the container root without following symlinks
(``objects.safeopen.open_beneath``), only if it is a regular file, and only up to a limit.
"""

from __future__ import annotations

import os
import stat

from hullguard.objects.safeopen import open_beneath


def parse_passwd(data: bytes) -> dict[int, str]:
    users: dict[int, str] = {}
    for line in data.splitlines():
        parts = line.split(b":")
        if len(parts) >= 3 and parts[2].isdigit():
            users.setdefault(int(parts[2]), parts[0].decode("utf-8", "replace"))
    return users


def read_in_root(root: str, relpath: str, limit: int = 1 << 20) -> bytes | None:
    """A small regular file below ``root``, or None (missing, a symlink on the way, not regular).

    ``root`` itself is ours to choose and may be a magic link such as ``/proc/PID/root``.
    """
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = open_beneath(root_fd, "/".join(parts).encode(), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def users_in_root(root: str) -> dict[int, str]:
    data = read_in_root(root, "etc/passwd")
    return parse_passwd(data) if data else {}
