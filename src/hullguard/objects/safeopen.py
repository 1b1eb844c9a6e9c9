"""Opening files *inside another root* (a container's ``/proc/<pid>/root``) with ``openat2``.

:mod:`hullguard.objects.hostfs` walks host trees with ``O_NOFOLLOW`` directory fds, which is
enough when the walk starts at a real directory. A container's private mounts (a tmpfs mounted
inside the container) are only reachable through the magic link ``/proc/<pid>/root``, and a
path *string* through that link is dangerous: once the kernel has jumped through it, an
absolute symlink in the container (``/scratch/x -> /etc/shadow``) is resolved against *our*
root, the host's. So the magic link is opened once, as a directory fd, and everything below it
is opened with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)``
relative to that fd: ``..`` and absolute names stay inside, no symlink is followed at all.

Python has no ``openat2`` binding, hence ``ctypes`` (syscall 437 on x86_64 and aarch64, the
same number on every architecture that has it). When the kernel lacks it (``ENOSYS``, Linux
< 5.6), the same guarantees come from an ``O_NOFOLLOW`` walk via :mod:`hostfs`: refusing every
symlink and every ``..`` makes "in root" hold by construction.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass

from hullguard.objects import hostfs

SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine(), 437)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
CONFINED = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS
"""The resolve flags every open below a foreign root uses."""

FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None


def openat2(dir_fd: int, path: bytes, flags: int, resolve: int = CONFINED, mode: int = 0) -> int:
    """The raw ``openat2`` call; raises ``OSError`` (``ENOSYS`` when the kernel lacks it)."""
    how = _OpenHow(flags, mode, resolve)
    fd = _libc.syscall(SYS_OPENAT2, ctypes.c_int(dir_fd), ctypes.c_char_p(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def have_openat2() -> bool:
    """Whether this kernel implements ``openat2`` (probed once)."""
    global _have_openat2
    if _have_openat2 is None:
        try:
            os.close(openat2(-100, b"/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, RESOLVE_NO_SYMLINKS))
            _have_openat2 = True
        except OSError as exc:
            _have_openat2 = exc.errno != errno.ENOSYS
    return _have_openat2


def open_beneath(root_fd: int, relpath: bytes, flags: int = FILE_FLAGS) -> int:
    """Open ``relpath`` inside the root ``root_fd`` without ever following a symlink or leaving it.

    Raises ``OSError``: ``ELOOP`` for a symlink on the way, ``EXDEV`` when the fallback sees
    ``..``. An empty ``relpath`` opens the root itself again.
    """
    rel = relpath.strip(b"/") or b"."
    if have_openat2():
        return openat2(root_fd, rel, flags | os.O_CLOEXEC)
    head, _, name = rel.rpartition(b"/")
    parent = hostfs.open_dir_beneath(root_fd, head)
    try:
        if name in (b".", b""):
            return os.open(b".", flags | os.O_CLOEXEC, dir_fd=parent)
        if name == b"..":
            raise OSError(errno.EXDEV, "'..' in a path below the root", relpath)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)


def _read_at(dir_fd: int, name: bytes, limit: int = 16 << 20) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        parts: list[bytes] = []
        total = 0
        while total < limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ProcRoot:
    """The root directory of a live process, pinned against pid reuse.

    ``/proc/<pid>`` is opened first: a directory fd of a process that has exited answers
    ``ESRCH`` forever, even if the pid is reused, so the root and the ``cgroup`` read through
    it are the same process's. ``expect_in_cgroup`` (a container id) is checked in its cgroup.
    """

    pid: int
    root_fd: int
    mountinfo: bytes = b""
    """The process's ``/proc/<pid>/mountinfo``: mount points as the container sees them."""

    @staticmethod
    def open(pid: int, expect_in_cgroup: str = "") -> ProcRoot:
        proc_fd = os.open(f"/proc/{pid}".encode(), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if expect_in_cgroup:
                text = _read_at(proc_fd, b"cgroup")
                if expect_in_cgroup.encode() not in text:
                    raise OSError(errno.ESRCH, f"process {pid} is no longer in container "
                                  f"{expect_in_cgroup[:12]}")
            mountinfo = _read_at(proc_fd, b"mountinfo")
            # the one magic link we mean to follow: the process's root
            root_fd = os.open(b"root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_fd)
        finally:
            os.close(proc_fd)
        return ProcRoot(pid, root_fd, mountinfo)

    def close(self) -> None:
        os.close(self.root_fd)

    def __enter__(self) -> ProcRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
