"""One read of a small ``/proc`` file, without Python's buffered file objects.

The monitor and the behaviour reader read a few such files for every exec and permission
event on the machine; a raw ``open``/``read``/``close`` costs a fraction of ``open()``'s
text or buffered wrappers there.
"""

from __future__ import annotations

import os


def read_small(path: str, limit: int = 8192, dir_fd: int | None = None) -> bytes | None:
    """Up to ``limit`` bytes of ``path`` (relative to ``dir_fd`` when given); None when it cannot
    be read (the process is gone, for instance)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
