"""fanotify FID event records, from crafted bytes."""

from __future__ import annotations

import struct

from hullguard.behavior import files


def fid_event(mask: int, pid: int, handle: bytes, name: bytes, info_type: int = 2) -> bytes:
    body = struct.pack("=8sIi", b"\0" * 8, len(handle), 248) + handle + name + b"\0"
    body += b"\0" * (-(len(body) + 4) % 4)
    info = struct.pack("=BBH", info_type, 0, len(body) + 4) + body
    meta_len = files.METADATA.size
    return files.METADATA.pack(meta_len + len(info), 3, 0, meta_len, mask, -1, pid) + info


def test_parse_dfid_name() -> None:
    buf = fid_event(files.FAN_CREATE, 77, b"\x01\x02\x03\x04\x05\x06\x07\x08", b"lnk") + \
        fid_event(files.FAN_CLOSE_WRITE, 78, b"\x09" * 8, b"\xffname")
    a, b = files.parse_fid_events(buf)
    assert (a.mask, a.pid, a.handle, a.name) == (files.FAN_CREATE, 77, (248, bytes(range(1, 9))), "lnk")
    assert b.name == "\udcffname" and b.pid == 78


def test_parse_truncated() -> None:
    buf = fid_event(files.FAN_CREATE, 1, b"\x01" * 8, b"x")
    assert files.parse_fid_events(buf[:-2]) == []
    overflow = files.METADATA.pack(files.METADATA.size, 3, 0, files.METADATA.size, files.FAN_Q_OVERFLOW, -1, 0)
    [ev] = files.parse_fid_events(overflow)
    assert ev.mask & files.FAN_Q_OVERFLOW and ev.handle is None
