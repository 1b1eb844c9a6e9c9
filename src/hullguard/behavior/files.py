"""File events in containers' sensitive directories: a notification-only fanotify group per container.

Why not the real-time monitor's group: it holds permission events and caches clean files with
ignore marks, so it neither sees a symlink being created (no open happens) nor a second read of
``/etc/shadow`` (the ignore mark hides it). Creation, rename and symlink events need a group that
reports file ids (``FAN_REPORT_DFID_NAME``), and overlayfs only allows those on *inode* marks
(a filesystem mark fails with EOPNOTSUPP, checked on this kernel). So each container gets one
small group with marks on a fixed list of sensitive directories of its ``MergedDir``.

This group is ``FAN_CLASS_NOTIF``: it never holds a process waiting for an answer, so nothing
here can block a container, whatever happens to the agent.

Why one group per container: overlayfs file ids of a directory shared from an image's lower
layer are identical in every container of that image, so within one group the id alone could
not say which container an event came from; per group it always can.

Directory ids are taken with ``name_to_handle_at(AT_HANDLE_FID)`` when the mark is placed and
compared with the id in each event; no handle is ever opened (overlayfs ids are not decodable).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import stat as stat_mod
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hullguard.behavior.event import EventType

log = logging.getLogger("hullguard.behavior.files")

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD = 0x1
FAN_OPEN = 0x20
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_MODIFY = 0x2
FAN_Q_OVERFLOW = 0x4000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3
AT_EMPTY_PATH = 0x1000
AT_HANDLE_FID = 0x200

METADATA = struct.Struct("=IBBHQii")
INFO_HDR = struct.Struct("=BBH")
MAX_HANDLE = 128

SENSITIVE_DIRS = (
    "/", "/etc", "/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin",
    "/lib", "/lib64", "/usr/lib", "/usr/lib64", "/tmp", "/var/tmp", "/root", "/root/.ssh",
    "/etc/cron.d", "/etc/ssh", "/etc/sudoers.d", "/etc/pam.d", "/etc/init.d", "/etc/profile.d",
    "/etc/ld.so.conf.d", "/etc/security", "/var/spool/cron", "/var/spool/cron/crontabs",
)
OPEN_WATCHED_DIRS = ("/etc",)
OPEN_NAMES = frozenset(("shadow", "gshadow", "shadow-", "gshadow-", "sudoers", "master.passwd"))
"""Only opens of these names produce events; every other open in /etc is dropped right away."""
ESCAPE_FILES = ("/proc/sys/kernel/core_pattern",)
"""Files outside the overlay whose modification is an escape primitive; marked through the
container's own procfs (``/proc/PID/root/proc/...``)."""

DIR_MASK = FAN_CREATE | FAN_MOVED_TO | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD
FileCallback = Callable[[str, int, str, str, str], None]
"""``(evt_type, pid, container_id, path, symlink_target)``."""


class _FileHandle(ctypes.Structure):
    _fields_ = (("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE))


_LIBC: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_init.restype = ctypes.c_int
        lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                      ctypes.c_char_p]
        lib.fanotify_mark.restype = ctypes.c_int
        lib.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                                          ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.name_to_handle_at.restype = ctypes.c_int
        _LIBC = lib
    return _LIBC


def file_id(fd: int) -> tuple[int, bytes]:
    """The id fanotify reports for the inode behind ``fd``: (handle type, handle bytes)."""
    h = _FileHandle()
    h.handle_bytes = MAX_HANDLE
    mount_id = ctypes.c_int()
    if libc().name_to_handle_at(fd, b"", ctypes.byref(h), ctypes.byref(mount_id),
                                AT_EMPTY_PATH | AT_HANDLE_FID) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"name_to_handle_at: {os.strerror(err)}")
    return h.handle_type, bytes(h.f_handle[: h.handle_bytes])


def open_dir_in(root: str, relpath: str) -> int:
    """An fd of a directory below ``root``, never following a symlink (the container owns them)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root is ours to trust
    try:
        for part in [p for p in relpath.split("/") if p]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class RawFileEvent:
    mask: int
    pid: int
    handle: tuple[int, bytes] | None
    name: str


def parse_fid_events(buf: bytes) -> list[RawFileEvent]:
    out: list[RawFileEvent] = []
    offset = 0
    while offset + METADATA.size <= len(buf):
        event_len, _vers, _r, metadata_len, mask, _fd, pid = METADATA.unpack_from(buf, offset)
        if event_len < METADATA.size or offset + event_len > len(buf):
            break
        handle: tuple[int, bytes] | None = None
        name = ""
        p = offset + metadata_len
        end = offset + event_len
        while p + INFO_HDR.size <= end:
            info_type, _pad, info_len = INFO_HDR.unpack_from(buf, p)
            if info_len < INFO_HDR.size + 16 or p + info_len > end:
                break
            if info_type in (FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_DFID) and handle is None:
                hbytes, htype = struct.unpack_from("=Ii", buf, p + 12)
                hstart = p + 20
                handle = (htype, bytes(buf[hstart:hstart + hbytes]))
                if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME:
                    raw = buf[hstart + hbytes:p + info_len].split(b"\0", 1)[0]
                    name = raw.decode("utf-8", "surrogateescape")
            p += info_len
        out.append(RawFileEvent(mask, pid, handle, name))
        offset += event_len
    return out


@dataclass
class _Watched:
    path: str
    fd: int
    opens: bool
    escape_name: str = ""
    """For a marked escape file's parent: the one child name that is reported."""


@dataclass
class ContainerWatch:
    """One container's group and the directories it marks."""

    container_id: str
    fan_fd: int
    dirs: dict[tuple[int, bytes], _Watched] = field(default_factory=dict)
    overflows: int = 0

    def close(self) -> None:
        for w in self.dirs.values():
            with contextlib.suppress(OSError):
                os.close(w.fd)
        self.dirs.clear()
        with contextlib.suppress(OSError):
            os.close(self.fan_fd)


class FileWatcher:
    """Per-container notification groups and the thread that reads them all."""

    def __init__(self, on_event: FileCallback, *, dirs: Iterable[str] = SENSITIVE_DIRS) -> None:
        self._on_event = on_event
        self._dirs = tuple(dirs)
        self._lock = threading.Lock()
        self._watches: dict[str, ContainerWatch] = {}
        self._by_fd: dict[int, ContainerWatch] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hullguard-behavior-files", daemon=True)
        self.events = 0
        self.overflows = 0
        self.errors = 0

    # --- containers ---------------------------------------------------------------------------
    def add(self, container_id: str, merged_dir: str, pid: int = 0) -> int:
        """Mark a container's sensitive directories; returns how many marks were placed."""
        if not merged_dir:
            return 0
        with self._lock:
            if container_id in self._watches:
                return len(self._watches[container_id].dirs)
        fan_fd = libc().fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME,
                                      os.O_RDONLY)
        if fan_fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init (behaviour file events): {os.strerror(err)}")
        watch = ContainerWatch(container_id, fan_fd)
        for d in self._dirs:
            opens = d in OPEN_WATCHED_DIRS
            self._mark(watch, merged_dir, d, DIR_MASK | (FAN_OPEN if opens else 0), opens)
        if pid > 0:
            for path in ESCAPE_FILES:
                parent, _, name = path.rpartition("/")
                self._mark(watch, f"/proc/{pid}/root", parent, FAN_MODIFY | FAN_EVENT_ON_CHILD, False,
                           escape_name=name, label=parent)
        with self._lock:
            self._watches[container_id] = watch
            self._by_fd[fan_fd] = watch
        os.write(self._wake_w, b"x")
        return len(watch.dirs)

    def _mark(self, watch: ContainerWatch, root: str, rel: str, mask: int, opens: bool, *,
              escape_name: str = "", label: str | None = None) -> None:
        try:
            fd = open_dir_in(root, rel)
        except OSError:
            return  # the directory does not exist in this container (or is a symlink)
        try:
            if libc().fanotify_mark(watch.fan_fd, FAN_MARK_ADD, mask, fd, None) < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            key = file_id(fd)
        except OSError as exc:
            log.debug("behaviour: cannot mark %s in %s: %s", rel, watch.container_id[:12], exc)
            os.close(fd)
            return
        watch.dirs[key] = _Watched(label if label is not None else (rel.rstrip("/") or "/"), fd, opens,
                                   escape_name)

    def remove(self, container_id: str) -> None:
        with self._lock:
            watch = self._watches.pop(container_id, None)
            if watch is not None:
                self._by_fd.pop(watch.fan_fd, None)
        if watch is not None:
            os.write(self._wake_w, b"x")
            watch.close()

    def containers(self) -> list[str]:
        with self._lock:
            return list(self._watches)

    # --- reading ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
            self._by_fd.clear()
        for w in watches:
            w.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            with self._lock:
                fds = list(self._by_fd)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            for fd, _ev in poller.poll(1000):
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    break  # re-register the (changed) set of groups
                with self._lock:
                    watch = self._by_fd.get(fd)
                if watch is not None:
                    self._drain(watch)

    def _drain(self, watch: ContainerWatch) -> None:
        for _ in range(64):
            try:
                buf = os.read(watch.fan_fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL):
                    return  # removed while we were reading
                self.errors += 1
                return
            for raw in parse_fid_events(buf):
                try:
                    self._handle(watch, raw)
                except Exception:
                    self.errors += 1
                    log.exception("behaviour file event failed")

    def _handle(self, watch: ContainerWatch, raw: RawFileEvent) -> None:
        if raw.mask & FAN_Q_OVERFLOW:
            watch.overflows += 1
            self.overflows += 1
            return
        watched = watch.dirs.get(raw.handle) if raw.handle is not None else None
        if watched is None or not raw.name:
            return
        if watched.escape_name:
            if raw.name != watched.escape_name:
                return
            self.events += 1
            self._on_event(EventType.WRITE, raw.pid, watch.container_id,
                           f"{watched.path}/{raw.name}", "")
            return
        path = f"{watched.path.rstrip('/')}/{raw.name}"
        target = ""
        if raw.mask & FAN_CREATE:
            # a new regular file is reported once, by its FAN_CLOSE_WRITE (it is opened for
            # writing to be created); symlinks, fifos and device nodes only by their creation
            evt = EventType.CREATE
            try:
                st = os.stat(raw.name, dir_fd=watched.fd, follow_symlinks=False)
                if stat_mod.S_ISREG(st.st_mode) and not raw.mask & (FAN_CLOSE_WRITE | FAN_MOVED_TO):
                    return
                if stat_mod.S_ISLNK(st.st_mode):
                    evt = EventType.SYMLINK
                    target = os.fsdecode(os.readlink(raw.name, dir_fd=watched.fd))
            except OSError:
                pass
        elif raw.mask & FAN_MOVED_TO:
            evt = EventType.RENAME
        elif raw.mask & FAN_CLOSE_WRITE:
            evt = EventType.WRITE
        elif raw.mask & FAN_OPEN:
            if not watched.opens or raw.name not in OPEN_NAMES:
                return
            evt = EventType.OPEN
        else:
            return
        self.events += 1
        self._on_event(evt, raw.pid, watch.container_id, path, target)
