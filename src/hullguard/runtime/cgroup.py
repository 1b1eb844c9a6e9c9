"""pid -> container id, from what the kernel shows in ``/proc/<pid>/cgroup``.

Every container runtime puts a container's processes in a cgroup whose path carries the
64-hex container id; only the spelling differs (cgroup v1 and v2 alike)::

    /docker/<id>                           dockerd, cgroupfs driver
    /system.slice/docker-<id>.scope        dockerd, systemd driver
    /kubepods/.../cri-containerd-<id>.scope  containerd CRI
    /kubepods.slice/.../crio-<id>.scope    CRI-O
    /machine.slice/libpod-<id>.scope       podman
    /kubepods/besteffort/pod<uid>/<id>     kubelet, cgroupfs driver

Reading the cgroup file is cheap and works for processes in any namespace, which is why the
real-time monitor uses it rather than asking a runtime for every event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hullguard.runtime.procfile import read_small

_ID = r"[0-9a-f]{64}"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("docker", re.compile(rf"/docker-({_ID})\.scope(?:/|$)")),
    ("docker", re.compile(rf"/docker/({_ID})(?:/|$)")),
    ("containerd", re.compile(rf"/cri-containerd-({_ID})\.scope(?:/|$)")),
    ("containerd", re.compile(rf"/cri-containerd[:/]({_ID})(?:/|$)")),
    ("cri-o", re.compile(rf"/crio-(?:conmon-)?({_ID})\.scope(?:/|$)")),
    ("podman", re.compile(rf"/libpod-(?:conmon-)?({_ID})\.scope(?:/|$)")),
    ("podman", re.compile(rf"/libpod_parent/libpod-({_ID})(?:/|$)")),
    ("kubernetes", re.compile(rf"/kubepods[^\n]*/({_ID})(?:/|$)")),
)


@dataclass(frozen=True)
class CgroupContainer:
    id: str
    runtime: str


def container_from_cgroup(text: str) -> CgroupContainer | None:
    """The container a process runs in, from the text of its cgroup file; None on the host.

    Lines look like ``hierarchy-ID:controllers:path``; the first line whose path names a
    container wins (all hierarchies agree for a containerised process).
    """
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2]
        for runtime, pattern in _PATTERNS:
            m = pattern.search(path)
            if m:
                return CgroupContainer(m.group(1), runtime)
    return None


_PARSED: dict[bytes, CgroupContainer | None] = {}
_PARSED_MAX = 4096


def container_from_cgroup_bytes(raw: bytes) -> CgroupContainer | None:
    """:func:`container_from_cgroup` of a raw cgroup file, cached by its text.

    Called for every permission event and every exec on the machine; all processes of one
    container (and all host processes of one service) have the same cgroup file, so the
    regular expressions run once per distinct text. Bounded: cleared when full.
    """
    try:
        return _PARSED[raw]
    except KeyError:
        pass
    found = container_from_cgroup(raw.decode("utf-8", "replace"))
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[raw] = found
    return found


def read_cgroup(pid: int, dir_fd: int | None = None) -> bytes | None:
    """The raw ``/proc/PID/cgroup`` (``cgroup`` relative to ``dir_fd``, an open ``/proc/PID``);
    None when the process is gone (or is being reaped: the file is empty then)."""
    return read_small("cgroup" if dir_fd is not None else f"/proc/{pid}/cgroup", 65536, dir_fd) or None


def container_of_pid(pid: int) -> CgroupContainer | None:
    """The container of ``pid``; None for host processes and for processes that have exited."""
    raw = read_cgroup(pid)
    return container_from_cgroup_bytes(raw) if raw is not None else None
