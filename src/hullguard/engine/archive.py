"""Recognising archives by their magic bytes (never by name) and small header parsers.

Only formats the standard library unpacks are recognised: gzip, bzip2, xz (compression
layers) and tar, zip (containers).
"""

from __future__ import annotations

import struct
import tarfile
from typing import Literal

Kind = Literal["gzip", "bzip2", "xz", "tar", "zip"]
COMPRESSED: frozenset[str] = frozenset({"gzip", "bzip2", "xz"})
SNIFF_SIZE = 512
"""Bytes needed to recognise every format (a tar header is one 512-byte block)."""


def sniff(head: bytes) -> Kind | None:
    """The archive format of data starting with ``head`` (at least ``SNIFF_SIZE`` bytes
    when available), or ``None``."""
    if head[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[3:4] != b"0" and head[4:10] in (
        b"\x31\x41\x59\x26\x53\x59",
        b"\x17\x72\x45\x38\x50\x90",
    ):
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= SNIFF_SIZE and _is_tar_header(head[:SNIFF_SIZE]):
        return "tar"
    return None


def _is_tar_header(block: bytes) -> bool:
    """ustar/GNU magic, or (old v7 tars) a valid header checksum with a file name."""
    if block[257:262] == b"ustar":
        return True
    if block[0] == 0 or block.count(0) == len(block):
        return False
    try:
        stored = int(block[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned, signed = tarfile.calc_chksums(block)  # type: ignore[attr-defined]
    return stored in (unsigned, signed)


def gzip_member_name(head: bytes) -> str | None:
    """The original file name stored in a gzip header (FNAME), if any and in ``head``."""
    if len(head) < 10 or head[:2] != b"\x1f\x8b":
        return None
    flags = head[3]
    pos = 10
    if flags & 0x04:  # FEXTRA
        if len(head) < pos + 2:
            return None
        (xlen,) = struct.unpack_from("<H", head, pos)
        pos += 2 + xlen
    if not flags & 0x08:  # FNAME
        return None
    end = head.find(b"\x00", pos)
    if end <= pos:
        return None
    raw = head[pos:end]
    name = raw.decode("latin-1")  # RFC 1952: ISO 8859-1
    name = name.rsplit("/", 1)[-1]
    return name or None


def strip_suffix(name: str, kind: str) -> str:
    """``x.gz`` -> ``x``; ``x.tgz`` -> ``x.tar``; the inner name of a compressed file."""
    base = name.rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix, repl in (
        (".tgz", ".tar"), (".taz", ".tar"), (".tbz2", ".tar"), (".tbz", ".tar"), (".txz", ".tar"),
        (".gz", ""), (".z", ""), (".bz2", ""), (".bz", ""), (".xz", ""),
    ):
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)] + repl
    return base + {"gzip": ".out", "bzip2": ".out", "xz": ".out"}.get(kind, "")


def zip_declared_entries(tail: bytes) -> int | None:
    """Entry count from the end-of-central-directory record found in ``tail`` (the last
    ~64 KiB of a zip), zip64 aware; ``None`` if absent. Checked before ``zipfile`` parses
    the directory so a zip declaring millions of entries cannot exhaust memory."""
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) < pos + 22:
        return None
    (entries,) = struct.unpack_from("<H", tail, pos + 10)
    if entries == 0xFFFF:
        loc = pos - 20
        if loc >= 0 and tail[loc : loc + 4] == b"PK\x06\x07":
            zpos = tail.rfind(b"PK\x06\x06", 0, loc)
            if zpos >= 0 and len(tail) >= zpos + 40:
                (entries,) = struct.unpack_from("<Q", tail, zpos + 32)
    return int(entries)
