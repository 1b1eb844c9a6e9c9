"""The built-in rules must not flag anything in this host's /usr/bin and /usr/lib.

Slow (about a minute on 2 cores), marked ``slow`` but not deselected: ``make test`` runs it.
Two worker processes, since YARA-X holds the GIL; each worker loads its own engine. Runs
unprivileged too: ``O_NOATIME`` is refused (EPERM) on files we do not own, so the open falls
back to plain flags instead of skipping the file (which once made this test scan nothing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest

from hullguard.engine.engine import Engine

pytestmark = pytest.mark.slow

_ENGINE: Engine | None = None


def _init() -> None:
    global _ENGINE
    _ENGINE = Engine.load()


def _open(path: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:  # not our file and no CAP_FOWNER: O_NOATIME is refused
        return os.open(path, flags)


def _scan(paths: list[str]) -> tuple[list[str], int, int]:
    assert _ENGINE is not None
    hits: list[str] = []
    scanned = 0
    count = 0
    for path in paths:
        try:
            fd = _open(path)
        except OSError:
            continue
        try:
            out = _ENGINE.scan_fd(fd)
        finally:
            os.close(fd)
        count += 1
        scanned += out.scanned_bytes
        for v in out.detections:
            assert v.detection is not None
            hits.append(f"{path}!/{'!/'.join(v.inner)}: {v.detection.name}")
    return hits, scanned, count


def _batches(roots: tuple[str, ...], size: int = 200) -> Iterator[list[str]]:
    batch: list[str] = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    batch.append(path)
                    if len(batch) >= size:
                        yield batch
                        batch = []
    if batch:
        yield batch


@pytest.mark.timeout(900)
def test_no_false_positives_in_usr_bin_and_usr_lib() -> None:
    hits: list[str] = []
    total = files = 0
    with ProcessPoolExecutor(max_workers=2, initializer=_init) as pool:
        for found, scanned, count in pool.map(_scan, _batches(("/usr/bin", "/usr/lib"))):
            hits.extend(found)
            total += scanned
            files += count
    print(f"no-false-positive scan: {files} files, {total / 1e6:.0f} MB scanned")
    assert files > 1000 and total > 100 * 1024 * 1024
    assert hits == []
