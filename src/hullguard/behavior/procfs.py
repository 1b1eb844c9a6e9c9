"""Process facts from ``/proc``, read the moment an event arrives and cached per process.

A process can exit between the kernel's event and our read; every reader here returns None or
an empty value then, and the event goes on with what is known (``None`` fields match no rule).
Command lines are attacker-controlled: at most :data:`MAX_CMDLINE` bytes are read, decoded with
``surrogateescape`` (never fails), and only escaped when printed or stored.

The table keys processes by pid *and* start time, so a recycled pid is never mistaken for the
process that had it before; exited processes stay in the table (bounded, least recently used
first out) because file events of a short-lived process are often read after it exited.
"""

from __future__ import annotations

import os
import stat as stat_mod
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hullguard.runtime.procfile import read_small

MAX_CMDLINE = 64 * 1024
MAX_ANCESTORS = 12
BUSYBOX_REEXEC = frozenset(("exe",))
"""comm values that say nothing: busybox re-executes ``/proc/self/exe`` for its applets."""


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    start: int
    """Start time in clock ticks since boot (/proc/PID/stat field 22)."""
    comm: str
    exe: str
    argv: tuple[str, ...]
    uid: int
    loginuid: int
    tty: int
    vpid: int
    container_id: str

    @property
    def name(self) -> str:
        if self.comm in BUSYBOX_REEXEC and self.argv:
            return os.path.basename(self.argv[0]) or self.comm
        return self.comm

    @property
    def cmdline(self) -> str:
        return " ".join(self.argv)


def open_proc(pid: int) -> int | None:
    """An ``O_PATH`` fd of ``/proc/PID``; None when the process is gone.

    Every later read through it names the same process even if the pid is reused meanwhile (a
    reused pid's files answer ESRCH), and each read skips the ``/proc/PID`` lookup, which is a
    large part of what reading six small files costs on the exec storm's hot path.
    """
    try:
        return os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def parse_stat(data: bytes) -> tuple[str, int, int, int] | None:
    """(comm, ppid, tty_nr, starttime) from /proc/PID/stat; comm may hold spaces and ')'."""
    try:
        left, right = data.index(b"("), data.rindex(b")")
        comm = data[left + 1:right].decode("utf-8", "surrogateescape")
        rest = data[right + 2:].split()
        return comm, int(rest[1]), int(rest[4]), int(rest[19])
    except (ValueError, IndexError):
        return None


def parse_status(data: bytes) -> tuple[int, int]:
    """(real uid, pid in the innermost pid namespace) from /proc/PID/status."""
    uid, vpid = -1, 0
    i = data.find(b"\nUid:")
    if i >= 0:
        parts = data[i + 5:data.find(b"\n", i + 5)].split()
        if parts and parts[0].isdigit():
            uid = int(parts[0])
    i = data.find(b"\nNSpid:")
    if i >= 0:
        end = data.find(b"\n", i + 7)
        parts = data[i + 7:end if end >= 0 else len(data)].split()
        if parts and parts[-1].isdigit():
            vpid = int(parts[-1])
    return uid, vpid


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    if data.endswith(b"\0"):
        data = data[:-1]
    if not data:
        return ()
    return tuple(a.decode("utf-8", "surrogateescape") for a in data.split(b"\0"))


def read_process(pid: int, container_id: str | None = None, dir_fd: int | None = None) -> ProcInfo | None:
    """Everything about ``pid`` in one go; None when it has already exited.

    ``dir_fd`` is :func:`open_proc`'s fd when the caller holds one (it stays the caller's).
    """
    own = dir_fd is None
    d = open_proc(pid) if own else dir_fd
    if d is None:
        return None
    try:
        st = read_small("stat", dir_fd=d)
        parsed = parse_stat(st) if st else None
        if parsed is None:
            return None
        comm, ppid, tty, start = parsed
        status = read_small("status", dir_fd=d) or b""
        uid, vpid = parse_status(status)
        argv = parse_cmdline(read_small("cmdline", MAX_CMDLINE, dir_fd=d) or b"")
        try:
            exe = os.fsdecode(os.readlink("exe", dir_fd=d))
        except OSError:
            exe = ""
        login = read_small("loginuid", 32, dir_fd=d)
    finally:
        if own:
            os.close(d)
    try:
        loginuid = int(login) if login else -1
    except ValueError:
        loginuid = -1
    if container_id is None:
        from hullguard.runtime.cgroup import container_of_pid
        cg = container_of_pid(pid)
        container_id = cg.id if cg else ""
    return ProcInfo(pid, ppid, start, comm, exe, argv, uid, loginuid, tty, vpid, container_id)


def identity(pid: int) -> tuple[str, int] | None:
    """(comm, start time) of ``pid`` now: the start time tells a reused pid, the comm an exec."""
    data = read_small(f"/proc/{pid}/stat")
    parsed = parse_stat(data) if data else None
    return (parsed[0], parsed[3]) if parsed else None


def start_time(pid: int) -> int | None:
    now = identity(pid)
    return now[1] if now else None


class ProcessTable:
    """pid -> :class:`ProcInfo`, refreshed on exec, validated by start time, bounded.

    The proc connector's reader thread also keeps it in step with the kernel's event order:
    a fork gives the child its parent's facts, an exit (or an exec it did not read) marks the
    entry *stale*. :meth:`snapshot_ancestors` reads only entries that are not stale, so on that
    thread it answers "who was the parent when this exec happened", even when the rule worker
    gets to the event after the parent has exec'd something else (``sh -c 'a && b'``: the
    shell becomes ``b`` right after ``a`` exits).
    """

    def __init__(self, capacity: int = 32768,
                 read: Callable[[int, str | None, int | None], ProcInfo | None] | None = None) -> None:
        self._capacity = capacity
        self._read = read or read_process
        self._lock = threading.Lock()
        self._procs: OrderedDict[int, ProcInfo] = OrderedDict()
        self._stale: set[int] = set()

    def _put(self, info: ProcInfo) -> None:
        with self._lock:
            self._procs[info.pid] = info
            self._procs.move_to_end(info.pid)
            self._stale.discard(info.pid)
            while len(self._procs) > self._capacity:
                old, _ = self._procs.popitem(last=False)
                self._stale.discard(old)

    def on_exec(self, pid: int, container_id: str | None = None, dir_fd: int | None = None) -> ProcInfo | None:
        info = self._read(pid, container_id, dir_fd)
        if info is not None:
            self._put(info)
        return info

    def on_fork(self, child: int, parent: int) -> None:
        """A new process: it runs its parent's program until it execs (start time unknown: 0,
        so :meth:`get` reads it again when asked)."""
        with self._lock:
            p = self._procs.get(parent) if parent not in self._stale else None
            if p is None:
                if child in self._procs:
                    self._stale.add(child)  # whatever we knew under this pid was another process
                return
        # the constructor, not dataclasses.replace: this runs for every fork on the machine
        self._put(ProcInfo(child, parent, 0, p.comm, p.exe, p.argv, p.uid, p.loginuid, p.tty, 0,
                           p.container_id))

    def mark_stale(self, pid: int) -> None:
        """``pid`` exited, or exec'd a program that was not read: its entry no longer says who
        it is now (kept for file events that arrive late)."""
        with self._lock:
            if pid in self._procs:
                self._stale.add(pid)

    def cached(self, pid: int) -> ProcInfo | None:
        with self._lock:
            return self._procs.get(pid)

    def current(self, pid: int) -> ProcInfo | None:
        """The entry when it is not stale (no /proc read)."""
        with self._lock:
            return None if pid in self._stale else self._procs.get(pid)

    def get(self, pid: int) -> ProcInfo | None:
        """The process now: the cached entry while its start time and comm still match, else read
        again; the last known entry once it has exited."""
        cached = self.cached(pid)
        now = identity(pid)
        if now is None:
            return cached
        # same process and still the same program: a different comm is an exec the reader has
        # not got to yet (``sh -c 'cat /etc/shadow'`` becomes cat under the shell's pid)
        if cached is not None and now == (cached.comm, cached.start):
            return cached
        return self.on_exec(pid)

    def frozen_caller(self, pid: int, container_id: str) -> ProcInfo | None:
        """The program ``pid`` runs now, for a process held in an exec permission event.

        The table's entry is used when its command line is still the one in /proc (a cheap read
        of one file); otherwise the process is read again and the entry refreshed, since the
        reader may not have got to its last exec yet.
        """
        cached = self.cached(pid)
        if cached is not None:  # a fork's copy (start 0) is checked the same way: it runs its parent's program
            argv = read_small(f"/proc/{pid}/cmdline", MAX_CMDLINE)
            if argv is not None and parse_cmdline(argv) == cached.argv and cached.container_id == container_id:
                return cached
        return self.on_exec(pid, container_id)

    def ancestors(self, info: ProcInfo) -> list[ProcInfo]:
        """Parent first; stops after the first ancestor outside the process's container."""
        return self._walk(info, self.get)

    def snapshot_ancestors(self, info: ProcInfo) -> tuple[ProcInfo, ...]:
        """Parent first, as the table stands now; an ancestor it does not know is read once."""
        def lookup(pid: int) -> ProcInfo | None:
            return self.current(pid) or self.on_exec(pid)
        return tuple(self._walk(info, lookup))

    @staticmethod
    def _walk(info: ProcInfo, lookup: Callable[[int], ProcInfo | None]) -> list[ProcInfo]:
        out: list[ProcInfo] = []
        ppid, seen = info.ppid, {info.pid}
        while ppid > 0 and ppid not in seen and len(out) < MAX_ANCESTORS:
            seen.add(ppid)
            parent = lookup(ppid)
            if parent is None:
                break
            out.append(parent)
            if parent.container_id != info.container_id:
                break
            ppid = parent.ppid
        return out

    def __len__(self) -> int:
        return len(self._procs)


# --- costly facts, computed only when a rule asks --------------------------------------------
def lstat_in(root: str, relpath: str) -> os.stat_result | None:
    """lstat ``relpath`` below ``root`` without following symlinks on the way there."""
    parts = [p for p in relpath.split("/") if p]
    if not root or not parts or any(p in (".", "..") for p in parts):
        return None
    fds: list[int] = []
    try:
        # the root itself is trusted (a MergedDir, or the /proc/PID/root magic link): followed
        fds.append(os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        for part in parts[:-1]:
            fds.append(os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=fds[-1]))
        return os.stat(parts[-1], dir_fd=fds[-1], follow_symlinks=False)
    except OSError:
        return None
    finally:
        for fd in fds:
            os.close(fd)


def in_upper_layer(upper_dir: str, path: str) -> bool | None:
    """True when ``path`` (inside the container) exists in the writable layer as a real file.

    Overlayfs puts every file created or modified after the container started into UpperDir
    (a deleted lower file shows there as a 0/0 character device, a whiteout, which is not it).
    None when the upper dir is unknown.
    """
    if not upper_dir:
        return None
    st = lstat_in(upper_dir, path)
    if st is None:
        return False
    return not (stat_mod.S_ISCHR(st.st_mode) and st.st_rdev == 0)


def _socket_inodes(pid: int, table: str) -> set[str]:
    data = read_small(f"/proc/{pid}/net/{table}", 4 << 20) or b""
    inodes: set[str] = set()
    lines = data.decode("ascii", "replace").splitlines()[1:]
    col = 6 if table == "unix" else 9
    for line in lines:
        parts = line.split()
        if len(parts) > col:
            inodes.add(parts[col])
    return inodes


def fd_type(pid: int, fd: int) -> str:
    """What an fd of ``pid`` is: tcp, udp, unix, pipe, tty, file, other, or "" when closed.

    Sockets are told apart by looking their inode up in the process's own network namespace
    tables (/proc/PID/net/tcp and friends), which is how ``ss`` does it without netlink.
    """
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""
    if target.startswith("socket:["):
        inode = target[8:-1]
        for kind, tables in (("tcp", ("tcp", "tcp6")), ("udp", ("udp", "udp6")), ("unix", ("unix",))):
            if any(inode in _socket_inodes(pid, t) for t in tables):
                return kind
        return "other"
    if target.startswith("pipe:["):
        return "pipe"
    if target.startswith(("/dev/pts/", "/dev/tty", "/dev/console")):
        return "tty"
    if target.startswith("/"):
        return "file"
    return "other"


def docker_socket_inside(pid: int, host_socket: str = "/var/run/docker.sock") -> bool:
    """True when the host's Docker socket is reachable in the mount namespace of ``pid``.

    Every mount point of the process is compared by (device, inode) with the host's socket, so
    a bind mount is found whatever it is called inside the container.
    """
    try:
        host = os.stat(host_socket)
    except OSError:
        return False
    if not stat_mod.S_ISSOCK(host.st_mode):
        return False
    data = read_small(f"/proc/{pid}/mountinfo", 1 << 20) or b""
    root = f"/proc/{pid}/root"
    for line in data.splitlines():
        parts = line.split(b" ")
        if len(parts) < 5:
            continue
        mount_point = parts[4].decode("utf-8", "surrogateescape").replace("\\040", " ")
        if mount_point == "/":
            continue
        st = lstat_in(root, mount_point)
        if st is not None and stat_mod.S_ISSOCK(st.st_mode) and \
                (st.st_dev, st.st_ino) == (host.st_dev, host.st_ino):
            return True
    return False


