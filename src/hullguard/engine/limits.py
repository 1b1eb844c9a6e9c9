"""Limits that keep a scan bounded in depth, size and time, whatever the input."""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class ScanLimits:
    max_depth: int = 17
    """Archive nesting levels the engine descends into."""
    max_files: int = 10_000
    """Members per archive."""
    max_file_size: int = 100 * MB
    """Bytes of one file or member that are scanned."""
    max_object_size: int = 400 * MB
    """Bytes unpacked from one top-level object, all members together."""
    max_ratio: float = 200.0
    """Unpacked size / packed size above which a member is treated as a bomb."""
    scan_timeout: int = 60
    """Seconds one YARA-X scan of one buffer may take before it is reported as a timeout."""
