"""The binding's struct handling, against byte layouts written here by hand from fanotify(7)."""

from __future__ import annotations

import struct

import pytest

from hullguard.realtime import fanotify as fan


def meta(mask: int, fd: int, pid: int, extra: bytes = b"", vers: int = 3) -> bytes:
    event_len = 24 + len(extra)
    return struct.pack("=IBBHQii", event_len, vers, 0, 24, mask, fd, pid) + extra


def test_layout_sizes_match_the_kernel_abi() -> None:
    assert fan.METADATA.size == 24
    assert fan.RESPONSE.size == 8


def test_parse_several_events_in_one_buffer() -> None:
    buf = meta(fan.FAN_OPEN_EXEC_PERM, 7, 100) + meta(fan.FAN_CLOSE_WRITE, 8, 101)
    events = list(fan.parse_events(buf))
    assert [(e.mask, e.fd, e.pid) for e in events] == [(fan.FAN_OPEN_EXEC_PERM, 7, 100),
                                                        (fan.FAN_CLOSE_WRITE, 8, 101)]
    assert events[0].is_permission and not events[1].is_permission


def test_info_records_after_the_metadata_are_skipped() -> None:
    buf = meta(fan.FAN_OPEN_PERM, 5, 1, extra=b"\xff" * 16) + meta(fan.FAN_OPEN_PERM, 6, 2)
    assert [e.fd for e in fan.parse_events(buf)] == [5, 6]


def test_a_truncated_tail_is_ignored() -> None:
    buf = meta(fan.FAN_OPEN_PERM, 5, 1) + meta(fan.FAN_OPEN_PERM, 6, 2)[:10]
    assert [e.fd for e in fan.parse_events(buf)] == [5]


def test_overflow_event_has_no_fd() -> None:
    (ev,) = fan.parse_events(meta(fan.FAN_Q_OVERFLOW, fan.FAN_NOFD, 0))
    assert ev.overflow and ev.fd == -1


def test_unknown_version_is_an_error_not_garbage() -> None:
    with pytest.raises(fan.FanotifyError):
        list(fan.parse_events(meta(fan.FAN_OPEN_PERM, 5, 1, vers=4)))


def test_response_layout() -> None:
    assert fan.RESPONSE.pack(9, fan.FAN_DENY | fan.FAN_AUDIT) == struct.pack("=iI", 9, 0x12)


def test_closed_group_ignores_late_answers() -> None:
    group = fan.Fanotify.__new__(fan.Fanotify)
    group.fd = -1
    group.respond(5, True)  # no exception: the kernel released everyone when the fd closed
    with pytest.raises(fan.FanotifyError):
        group.ignore(5, fan.FAN_OPEN_PERM)
