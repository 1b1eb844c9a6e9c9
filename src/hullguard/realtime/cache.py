"""The user-space verdict cache: one answer per file version and signature set.

The kernel's ignore marks make repeated opens of clean files free, but the kernel may evict
them and they cannot hold detections. This cache backs them up: the key is everything that
changes when the file or the signatures change (device, inode, mtime, ctime, size, signature
DB version), so a hit is the verdict the engine would give again. It is a bounded LRU, so a
scan of millions of files cannot grow it without limit.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class FileKey:
    dev: int
    ino: int
    mtime_ns: int
    ctime_ns: int
    size: int
    db_version: str

    @staticmethod
    def of(st: os.stat_result, db_version: str) -> FileKey:
        return FileKey(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, db_version)


class LRUCache(Generic[V]):
    """A thread-safe bounded mapping that forgets the least recently used entry first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._data: OrderedDict[FileKey, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: FileKey) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: FileKey, value: V) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def discard(self, key: FileKey) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
