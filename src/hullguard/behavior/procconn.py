"""The kernel's process events connector (``NETLINK_CONNECTOR`` / ``CN_IDX_PROC``), read in Python.

Why this and not eBPF or a kernel module: the proc connector is in every distribution kernel,
needs only ``CAP_NET_ADMIN`` and a socket, and reports fork, exec and exit of every process in
every namespace (ids are in the initial pid namespace). Nothing has to be compiled on the target.
The Python standard library speaks netlink sockets; the messages are fixed-layout structs that
:mod:`struct` unpacks. No maintained PyPI package covers it (``python-proc-events`` style
packages are abandoned and wrap the same twenty lines).

Losing events is detected two ways: ``recv`` fails with ``ENOBUFS`` when the socket buffer
overran, and the connector stamps each message with a per-CPU sequence number, so a gap in the
sequence of one CPU says exactly how many events that CPU dropped.

On kernels >= 6.6 the subscription can carry an event filter (``struct proc_input``) so the
kernel only sends the events asked for. It is off by default: the per-CPU sequence counts every
event, filtered or not, so with a filter the gaps no longer measure loss (only ENOBUFS does).
Exact drop accounting is worth three messages per short-lived process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
NLMSG_ERROR = 2
NLMSG_NOOP = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

# enum what (proc_event)
PROC_EVENT_NONE = 0x00000000
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_UID = 0x00000004
PROC_EVENT_GID = 0x00000040
PROC_EVENT_SID = 0x00000080
PROC_EVENT_PTRACE = 0x00000100
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_NONZERO_EXIT = 0x20000000
PROC_EVENT_COREDUMP = 0x40000000
PROC_EVENT_EXIT = 0x80000000

# enum proc_cn_event, used only in the subscription filter (kernel >= 6.6)
PROC_CN_EVENT_FILTER = {PROC_EVENT_FORK: 0x1, PROC_EVENT_EXEC: 0x2, PROC_EVENT_UID: 0x4,
                        PROC_EVENT_GID: 0x40, PROC_EVENT_SID: 0x80, PROC_EVENT_PTRACE: 0x100,
                        PROC_EVENT_COMM: 0x200, PROC_EVENT_COREDUMP: 0x40000000,
                        PROC_EVENT_EXIT: 0x80000000}

NLMSGHDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")           # idx, val, seq, ack, len, flags
PROC_EVENT_HDR = struct.Struct("=IIQ")      # what, cpu, timestamp_ns
PAIR = struct.Struct("=ii")                 # pid, tgid
FORK = struct.Struct("=iiii")               # parent pid, parent tgid, child pid, child tgid
EXIT = struct.Struct("=iiIIii")             # pid, tgid, exit code, exit signal, parent pid, tgid

RCVBUF = 32 * 1024 * 1024
"""Kernel socket buffer: about 400 000 exec messages, seconds of an exec storm."""


class ProcEvent(NamedTuple):
    """One kernel event (a tuple: several are built per short process, so construction is kept cheap)."""

    what: int
    cpu: int
    seq: int
    timestamp_ns: int
    pid: int
    """Thread id of the event's subject (for fork: the child)."""
    tgid: int
    """Process id of the subject."""
    parent_tgid: int = 0
    exit_code: int = 0

    @property
    def is_exec(self) -> bool:
        return self.what == PROC_EVENT_EXEC

    @property
    def is_exit(self) -> bool:
        return self.what == PROC_EVENT_EXIT

    @property
    def is_fork(self) -> bool:
        return self.what == PROC_EVENT_FORK


HEADERS = struct.Struct("=IHHIIIIIIHHIIQ")
"""nlmsghdr + cn_msg + the proc_event header, unpacked at once on the fast path."""


def parse_messages(buf: bytes) -> Iterator[ProcEvent]:
    """Events in one datagram (normally one netlink message); malformed parts are skipped."""
    if len(buf) >= HEADERS.size:  # the usual datagram: one well-formed proc event
        (nl_len, nl_type, _fl, _nlseq, _nlpid, idx, val, seq, _ack, data_len, _f,
         what, cpu, ts) = HEADERS.unpack_from(buf, 0)
        if nl_len == len(buf) and nl_type == NLMSG_DONE and idx == CN_IDX_PROC and val == CN_VAL_PROC \
                and NLMSGHDR.size + CN_MSG.size + data_len == nl_len:
            p, room = HEADERS.size, data_len - PROC_EVENT_HDR.size
            if what == PROC_EVENT_FORK and room >= FORK.size:
                _ppid, ptgid, cpid, ctgid = FORK.unpack_from(buf, p)
                yield ProcEvent(what, cpu, seq, ts, cpid, ctgid, ptgid)
                return
            if what == PROC_EVENT_EXIT and room >= EXIT.size:
                pid, tgid, code, _sig, _pp, ptgid = EXIT.unpack_from(buf, p)
                yield ProcEvent(what, cpu, seq, ts, pid, tgid, ptgid, code)
                return
            if what != PROC_EVENT_FORK and what != PROC_EVENT_EXIT and room >= PAIR.size:
                pid, tgid = PAIR.unpack_from(buf, p)
                yield ProcEvent(what, cpu, seq, ts, pid, tgid)
                return
    offset = 0
    while offset + NLMSGHDR.size <= len(buf):
        nl_len, nl_type, _flags, _nlseq, _nlpid = NLMSGHDR.unpack_from(buf, offset)
        if nl_len < NLMSGHDR.size or offset + nl_len > len(buf):
            return
        body = offset + NLMSGHDR.size
        if nl_type == NLMSG_DONE and nl_len >= NLMSGHDR.size + CN_MSG.size:
            idx, val, seq, _ack, data_len, _f = CN_MSG.unpack_from(buf, body)
            data = body + CN_MSG.size
            if idx == CN_IDX_PROC and val == CN_VAL_PROC and data_len >= PROC_EVENT_HDR.size \
                    and data + data_len <= offset + nl_len:
                ev = _parse_event(buf, data, data_len, seq)
                if ev is not None:
                    yield ev
        offset += (nl_len + 3) & ~3


def _parse_event(buf: bytes, data: int, data_len: int, seq: int) -> ProcEvent | None:
    what, cpu, ts = PROC_EVENT_HDR.unpack_from(buf, data)
    p = data + PROC_EVENT_HDR.size
    room = data_len - PROC_EVENT_HDR.size
    if what == PROC_EVENT_FORK and room >= FORK.size:
        _ppid, ptgid, cpid, ctgid = FORK.unpack_from(buf, p)
        return ProcEvent(what, cpu, seq, ts, cpid, ctgid, parent_tgid=ptgid)
    if what == PROC_EVENT_EXIT and room >= EXIT.size:
        pid, tgid, code, _sig, _ppid, ptgid = EXIT.unpack_from(buf, p)
        return ProcEvent(what, cpu, seq, ts, pid, tgid, parent_tgid=ptgid, exit_code=code)
    if room >= PAIR.size:
        pid, tgid = PAIR.unpack_from(buf, p)
        return ProcEvent(what, cpu, seq, ts, pid, tgid)
    return ProcEvent(what, cpu, seq, ts, 0, 0)  # PROC_EVENT_NONE: the subscription's acknowledgement


def subscription(op: int, events: int | None) -> bytes:
    """The netlink message that starts (or stops) the event stream, optionally filtered."""
    if events is None:
        payload = struct.pack("=I", op)
    else:
        mask = 0
        for what, bit in PROC_CN_EVENT_FILTER.items():
            if events & what:
                mask |= bit
        payload = struct.pack("=II", op, mask)  # struct proc_input
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def kernel_supports_filter(release: str | None = None) -> bool:
    """Event filtering in the subscription arrived in Linux 6.6."""
    text = release if release is not None else os.uname().release
    try:
        major, minor = (int(x) for x in text.split(".", 2)[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 6)


class SequenceTracker:
    """Counts messages the kernel numbered but that never arrived, per CPU."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self.lost = 0

    def see(self, cpu: int, seq: int) -> int:
        last = self._last.get(cpu)
        self._last[cpu] = seq
        if last is None:
            return 0
        gap = (seq - last - 1) & 0xFFFFFFFF
        if 0 < gap < 0x10000000:  # a huge "gap" is a counter reset or reordering, not loss
            self.lost += gap
            return gap
        return 0

    def reset(self) -> None:
        self._last.clear()


class ProcConnector:
    """A subscribed proc connector socket; ``read()`` returns events, counting drops."""

    def __init__(self, events: int = PROC_EVENT_EXEC | PROC_EVENT_EXIT, *, rcvbuf: int = RCVBUF,
                 use_filter: bool = False) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                  NETLINK_CONNECTOR)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, CN_IDX_PROC))
            filtered = use_filter and kernel_supports_filter()
            self.filtered = filtered
            self.sock.send(subscription(PROC_CN_MCAST_LISTEN, events if filtered else None))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)  # read() waits in poll(), then drains without blocking
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN)
        self.sequence = SequenceTracker()
        self.overruns = 0
        """Times the kernel reported ENOBUFS (the socket buffer overflowed)."""
        self._buf = bytearray(65536)

    @property
    def lost(self) -> int:
        """Events the kernel sent that never reached us (from the sequence gaps)."""
        return self.sequence.lost

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, timeout: float | None = None, max_messages: int = 1024) -> list[ProcEvent]:
        """The events waiting now (up to ``max_messages`` datagrams); [] on timeout.

        The kernel sends one datagram per event (three or four per short process), so reading
        one per call spent more on the call than on the event. Draining what is queued also
        gives the reader the whole recent history at once: an exec superseded by a later exec
        of the same process is known before anyone reads its /proc entry. Drops are counted,
        never raised.
        """
        wait_ms = None if timeout is None else max(0, int(timeout * 1000))
        try:
            if not self._poll.poll(wait_ms):
                return []
        except InterruptedError:
            return []
        events: list[ProcEvent] = []
        for _ in range(max_messages):
            try:
                n = self.sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1  # what is still queued is read on the next turn
                    continue
                if events:
                    break  # raised again by the next read, after these events are handled
                raise
            events.extend(parse_messages(bytes(self._buf[:n])))
        if not self.filtered:
            for ev in events:
                self.sequence.see(ev.cpu, ev.seq)
        return [ev for ev in events if ev.what != PROC_EVENT_NONE]

    def has_pending(self) -> bool:
        """Whether events are queued on the socket now (safe to call from another thread)."""
        readable, _, _ = select.select([self.sock.fileno()], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(subscription(PROC_CN_MCAST_IGNORE, None))
        self.sock.close()
