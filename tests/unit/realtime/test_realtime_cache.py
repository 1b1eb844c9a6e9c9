"""The user-space verdict cache: keys that change with the file and signatures, bounded LRU."""

from __future__ import annotations

import os
from pathlib import Path

from hullguard.realtime.cache import FileKey, LRUCache


def key(ino: int, db: str = "v1", mtime: int = 1, size: int = 10) -> FileKey:
    return FileKey(dev=1, ino=ino, mtime_ns=mtime, ctime_ns=mtime, size=size, db_version=db)


def test_hit_and_miss_counting() -> None:
    cache: LRUCache[str] = LRUCache(4)
    cache.put(key(1), "clean")
    assert cache.get(key(1)) == "clean"
    assert cache.get(key(2)) is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_any_change_of_the_file_or_signatures_misses() -> None:
    cache: LRUCache[str] = LRUCache(4)
    cache.put(key(1), "clean")
    assert cache.get(key(1, db="v2")) is None
    assert cache.get(key(1, mtime=2)) is None
    assert cache.get(key(1, size=11)) is None


def test_least_recently_used_is_evicted_first() -> None:
    cache: LRUCache[int] = LRUCache(2)
    cache.put(key(1), 1)
    cache.put(key(2), 2)
    assert cache.get(key(1)) == 1  # 2 is now the oldest
    cache.put(key(3), 3)
    assert cache.get(key(2)) is None
    assert cache.get(key(1)) == 1 and cache.get(key(3)) == 3
    assert len(cache) == 2


def test_zero_capacity_stores_nothing() -> None:
    cache: LRUCache[int] = LRUCache(0)
    cache.put(key(1), 1)
    assert cache.get(key(1)) is None


def test_key_of_a_real_file_changes_when_written(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"a")
    k1 = FileKey.of(os.stat(p), "db")
    os.utime(p, ns=(1, 1))
    p.write_bytes(b"ab")
    assert FileKey.of(os.stat(p), "db") != k1
