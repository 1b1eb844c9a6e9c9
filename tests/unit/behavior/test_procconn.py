"""Proc connector messages and loss accounting, from crafted bytes (no socket, no privileges)."""

from __future__ import annotations

import struct

from hullguard.behavior import procconn as pc


def message(what: int, payload: bytes, *, cpu: int = 0, seq: int = 0) -> bytes:
    event = pc.PROC_EVENT_HDR.pack(what, cpu, 123) + payload
    cn = pc.CN_MSG.pack(pc.CN_IDX_PROC, pc.CN_VAL_PROC, seq, 0, len(event), 0) + event
    return pc.NLMSGHDR.pack(pc.NLMSGHDR.size + len(cn), pc.NLMSG_DONE, 0, 0, 0) + cn


def test_parse_exec_fork_exit() -> None:
    buf = message(pc.PROC_EVENT_EXEC, struct.pack("=ii", 10, 10), seq=5)
    [ev] = pc.parse_messages(buf)
    assert ev.is_exec and (ev.pid, ev.tgid, ev.seq) == (10, 10, 5)
    [fork] = pc.parse_messages(message(pc.PROC_EVENT_FORK, struct.pack("=iiii", 1, 1, 20, 20)))
    assert fork.is_fork and fork.tgid == 20 and fork.parent_tgid == 1
    [ex] = pc.parse_messages(message(pc.PROC_EVENT_EXIT, struct.pack("=iiIIii", 20, 20, 256, 17, 1, 1)))
    assert ex.is_exit and ex.exit_code == 256 and ex.parent_tgid == 1


def test_truncated_and_foreign_messages_are_skipped() -> None:
    good = message(pc.PROC_EVENT_EXEC, struct.pack("=ii", 10, 10))
    assert list(pc.parse_messages(good[:-3])) == []
    foreign = bytearray(good)
    struct.pack_into("=I", foreign, pc.NLMSGHDR.size, 99)  # another connector index
    assert list(pc.parse_messages(bytes(foreign))) == []
    assert list(pc.parse_messages(b"\x00" * 7)) == []


def test_subscription_messages() -> None:
    plain = pc.subscription(pc.PROC_CN_MCAST_LISTEN, None)
    assert len(plain) == pc.NLMSGHDR.size + pc.CN_MSG.size + 4
    filtered = pc.subscription(pc.PROC_CN_MCAST_LISTEN, pc.PROC_EVENT_EXEC | pc.PROC_EVENT_EXIT)
    op, mask = struct.unpack_from("=II", filtered, pc.NLMSGHDR.size + pc.CN_MSG.size)
    assert op == pc.PROC_CN_MCAST_LISTEN and mask == 0x2 | 0x80000000


def test_sequence_gaps_count_lost_events_per_cpu() -> None:
    t = pc.SequenceTracker()
    assert t.see(0, 100) == 0
    assert t.see(1, 7) == 0
    assert t.see(0, 101) == 0
    assert t.see(0, 105) == 3
    assert t.see(1, 8) == 0
    assert t.see(0, 0xFFFFFFFF) == 0  # not a plausible gap: a reset, not counted
    assert t.lost == 3


def test_filter_needs_linux_6_6() -> None:
    assert pc.kernel_supports_filter("6.6.0")
    assert pc.kernel_supports_filter("6.18.44-fc")
    assert not pc.kernel_supports_filter("5.15.0-91-generic")
    assert not pc.kernel_supports_filter("weird")
