"""A small ctypes binding for fanotify(7): init, marks, reading events, answering permission events.

Why ctypes and not a library: the maintained-looking Python packages do not cover what real-time
protection needs. ``pyfanotify`` reads events in a forked child and forwards them over a socket
(so the process holding the fanotify fd is not the one answering, and it has no way to answer
permission events or to place ignore marks through an event fd); ``butter`` is unmaintained since
2021 and predates ``FAN_MARK_FILESYSTEM``, ``FAN_OPEN_EXEC_PERM`` and ``FAN_MARK_EVICTABLE``.
The kernel interface itself is three calls and two fixed-layout structs, which ctypes and
:mod:`struct` express exactly, with glibc's wrappers doing the syscalls.

Only what hullguard uses is exposed. The fd is created close-on-exec, so no helper process ever
inherits it: when the agent dies the kernel closes it and releases every process still waiting
for an answer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# fanotify_init flags
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_CLASS_CONTENT = 0x00000004
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020
FAN_ENABLE_AUDIT = 0x00000040

# fanotify_mark flags
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_IGNORED_MASK = 0x00000020
FAN_MARK_IGNORED_SURV_MODIFY = 0x00000040
FAN_MARK_FLUSH = 0x00000080
FAN_MARK_INODE = 0x00000000
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_FILESYSTEM = 0x00000100
FAN_MARK_EVICTABLE = 0x00000200

# event mask bits
FAN_ACCESS = 0x00000001
FAN_MODIFY = 0x00000002
FAN_CLOSE_WRITE = 0x00000008
FAN_CLOSE_NOWRITE = 0x00000010
FAN_OPEN = 0x00000020
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_OPEN_PERM = 0x00010000
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_ONDIR = 0x40000000
PERMISSION_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

# responses
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_AUDIT = 0x10

FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100

# struct fanotify_event_metadata { __u32 event_len; __u8 vers; __u8 reserved; __u16 metadata_len;
#   __aligned_u64 mask; __s32 fd; __s32 pid; }
METADATA = struct.Struct("=IBBHQii")
# struct fanotify_response { __s32 fd; __u32 response; }
RESPONSE = struct.Struct("=iI")
READ_SIZE = 64 * 1024


class FanotifyError(OSError):
    """A fanotify call failed; ``errno`` and a message that says which call."""


@dataclass(frozen=True)
class EventMetadata:
    mask: int
    fd: int
    pid: int

    @property
    def is_permission(self) -> bool:
        return bool(self.mask & PERMISSION_EVENTS)

    @property
    def overflow(self) -> bool:
        return bool(self.mask & FAN_Q_OVERFLOW)


def parse_events(buf: bytes) -> Iterator[EventMetadata]:
    """Split one read() buffer into events; info records after the metadata are skipped.

    A truncated or foreign-version record ends the buffer (the kernel never produces one, so
    this only guards against a kernel newer than this code with a changed layout).
    """
    offset = 0
    while offset + METADATA.size <= len(buf):
        event_len, vers, _reserved, metadata_len, mask, fd, pid = METADATA.unpack_from(buf, offset)
        if vers != FANOTIFY_METADATA_VERSION or event_len < METADATA.size or metadata_len < METADATA.size:
            raise FanotifyError(errno.EPROTO, f"fanotify: unexpected event layout (version {vers})")
        if offset + event_len > len(buf):
            break
        yield EventMetadata(mask=mask, fd=fd, pid=pid)
        offset += event_len


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    lib.fanotify_init.restype = ctypes.c_int
    lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    lib.fanotify_mark.restype = ctypes.c_int
    return lib


_LIBC: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
    return _LIBC


class Fanotify:
    """One fanotify group (a close-on-exec, non-blocking fd)."""

    def __init__(self, flags: int, event_f_flags: int) -> None:
        fd = libc().fanotify_init(flags, event_f_flags)
        if fd < 0:
            err = ctypes.get_errno()
            raise FanotifyError(err, f"fanotify_init: {os.strerror(err)}")
        self.fd: int = fd

    @classmethod
    def for_content(cls, audit: bool = False) -> Fanotify:
        """The group the monitor uses: content class (permission events), unlimited queue and marks."""
        flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS
        if audit:
            flags |= FAN_ENABLE_AUDIT
        event_flags = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NOATIME | os.O_NONBLOCK
        return cls(flags, event_flags)

    def mark(self, flags: int, mask: int, dirfd: int = AT_FDCWD, path: bytes | None = None) -> None:
        if self.fd < 0:
            raise FanotifyError(errno.EBADF, "fanotify group is closed")
        if libc().fanotify_mark(self.fd, flags, mask, dirfd, path) < 0:
            err = ctypes.get_errno()
            what = path.decode(errors="replace") if path else f"fd {dirfd}"
            raise FanotifyError(err, f"fanotify_mark {what}: {os.strerror(err)}")

    def mark_filesystem(self, dirfd: int, mask: int) -> None:
        """Mark the whole filesystem that ``dirfd`` lies on (``FAN_MARK_FILESYSTEM``)."""
        self.mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, mask, dirfd, None)

    def unmark_filesystem(self, dirfd: int, mask: int) -> None:
        self.mark(FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM, mask, dirfd, None)

    def ignore(self, event_fd: int, mask: int) -> None:
        """Stop reporting ``mask`` for the inode behind ``event_fd`` until it is modified.

        The ignore mark is evictable (it does not pin the inode; the kernel may forget it under
        memory pressure, which only costs a rescan) and does not survive modification.
        """
        self.mark(FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_EVICTABLE, mask, event_fd, None)

    def unignore(self, event_fd: int, mask: int) -> None:
        self.mark(FAN_MARK_REMOVE | FAN_MARK_IGNORED_MASK, mask, event_fd, None)

    def exempt(self, path: bytes, mask: int) -> None:
        """Never report ``mask`` for the file at ``path``: a permanent ignore mark that survives
        modification and pins the inode (unlike :meth:`ignore`'s), placed without following a
        symlink. An evictable mark already on the inode becomes permanent (the kernel refuses
        only the reverse). ``FAN_MARK_FLUSH`` drops it like any inode mark."""
        flags = FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_DONT_FOLLOW
        self.mark(flags, mask, AT_FDCWD, path)

    def flush_ignores(self) -> None:
        """Drop every inode mark of the group, i.e. every cached verdict (after a signature reload).

        ``FAN_MARK_FLUSH`` without a mark type flushes the group's *inode* marks only; the monitor
        places inode marks for nothing but ignore masks (its watches are filesystem marks), so
        this forgets the kernel-cached verdicts and keeps protection in place. It drops the
        :meth:`exempt` marks too; ``LockedFiles.remark`` places them again.
        """
        self.mark(FAN_MARK_FLUSH, 0, AT_FDCWD, None)

    def read(self) -> list[EventMetadata]:
        """Events available now; an empty list when there are none (the fd is non-blocking)."""
        try:
            buf = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return []
        except InterruptedError:
            return []
        return list(parse_events(buf))

    def respond(self, event_fd: int, allow: bool, audit: bool = False) -> None:
        if self.fd < 0:  # closed: the kernel already let every waiting process through
            return
        response = (FAN_ALLOW if allow else FAN_DENY) | (FAN_AUDIT if audit else 0)
        try:
            os.write(self.fd, RESPONSE.pack(event_fd, response))
        except OSError as exc:
            # ENOENT: the kernel no longer waits for this event (group shutting down).
            if exc.errno != errno.ENOENT:
                raise

    def close(self) -> None:
        """Closing the group drops every mark and lets all waiting processes through."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
