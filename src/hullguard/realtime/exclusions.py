"""Exclusions: accesses the operator said never to scan (paths, programs, users, containers, images).

Patterns are shell globs (``fnmatch``, case-sensitive, ``*`` also crosses ``/``), so
``/var/lib/mysql/*`` excludes everything below that directory. Users match by name or uid.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return bool(value) and any(fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True)
class Exclusions:
    paths: tuple[str, ...] = ()
    processes: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    images: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.paths or self.processes or self.users or self.containers or self.images)

    def path(self, path: bytes) -> bool:
        return _any(self.paths, os.fsdecode(path))

    def process(self, exe: str) -> bool:
        return _any(self.processes, exe)

    def user(self, uid: int | None, name: Callable[[], str]) -> bool:
        if not self.users or uid is None:
            return False
        return str(uid) in self.users or _any(self.users, name())

    def container(self, name: str, image: str) -> bool:
        return _any(self.containers, name) or _any(self.images, image)
