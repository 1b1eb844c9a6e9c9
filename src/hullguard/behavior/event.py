"""One behaviour event as the rules see it: a flat set of named fields.

Why flat and named: the same rules run against live events (filled from the proc connector,
fanotify and ``/proc``) and against recorded ones (``hullguard rules test`` reads JSON lines),
so the rule engine must not care where a value came from. Cheap fields are filled when the
event is made; costly ones (a stat of the overlay upper layer, a look at the stdin socket)
are computed on first use through a :class:`LazyFields` source and then kept.

A field that cannot be known (the process exited before it was read, a recorded event that
lacks it) is ``None``; every comparison against ``None`` is false (see docs/rules.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

Value = str | int | bool | tuple[str, ...] | None


class EventType:
    """``evt.type`` values."""

    EXECVE = "execve"
    OPEN = "open"
    CREATE = "create"
    WRITE = "write"
    SYMLINK = "symlink"
    RENAME = "rename"

    ALL = (EXECVE, OPEN, CREATE, WRITE, SYMLINK, RENAME)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: type
    """``str``, ``int``, ``bool`` or ``tuple`` (a list of strings)."""
    doc: str
    indexable: bool = False
    """``proc.aname[N]``: the N-th element (1 = the parent)."""


FIELDS: dict[str, FieldSpec] = {f.name: f for f in (
    FieldSpec("evt.type", str, "execve, open, create, write, symlink or rename"),
    FieldSpec("evt.source", str, "where the event came from: proc (proc connector), gate "
              "(an execution about to happen, from the real-time permission event), caller (the "
              "process calling that execve, read while it waits), file (fanotify)"),
    FieldSpec("proc.pid", int, "process id (host pid namespace)"),
    FieldSpec("proc.ppid", int, "parent process id"),
    FieldSpec("proc.vpid", int, "process id inside the container's pid namespace (1: the entrypoint)"),
    FieldSpec("proc.name", str, "process name: the kernel's comm (the executed file's base name); "
              "for busybox-style re-execs of /proc/self/exe the base name of argv[0]"),
    FieldSpec("proc.exe", str, "path of the executable, inside the container"),
    FieldSpec("proc.cmdline", str, "the command line, arguments joined by spaces"),
    FieldSpec("proc.args", str, "the arguments without argv[0], joined by spaces"),
    FieldSpec("proc.argv", tuple, "the arguments as a list (argv[0] first)", indexable=True),
    FieldSpec("proc.tty", int, "controlling terminal device number; 0 when there is none"),
    FieldSpec("proc.is_tty", bool, "true when the process has a controlling terminal"),
    FieldSpec("proc.pname", str, "parent's process name"),
    FieldSpec("proc.pexe", str, "parent's executable"),
    FieldSpec("proc.pcmdline", str, "parent's command line"),
    FieldSpec("proc.aname", tuple, "ancestors' names, parent first; without an index a comparison "
              "is true when it holds for any ancestor", indexable=True),
    FieldSpec("proc.exe_upper_layer", bool, "the executable lies in the container's writable layer: "
              "written (or copied up) after the container started"),
    FieldSpec("proc.stdin_type", str, "what fd 0 is: tcp, udp, unix, pipe, tty, file, "
              "other; empty if closed"),
    FieldSpec("proc.stdout_type", str, "what fd 1 is (same values as proc.stdin_type)"),
    FieldSpec("user.uid", int, "real user id (as the container sees it)"),
    FieldSpec("user.name", str, "user name from the container's /etc/passwd; the uid when unknown"),
    FieldSpec("user.loginuid", int, "audit login uid; -1 (4294967295) when not set by a login"),
    FieldSpec("container.id", str, "64-hex container id; empty for host processes"),
    FieldSpec("container.name", str, "container name"),
    FieldSpec("container.image", str, "image as NAME:TAG"),
    FieldSpec("container.docker_sock", bool, "the Docker socket is reachable inside the container "
              "(a bind mount of docker.sock)"),
    FieldSpec("file.path", str, "path of the file involved, inside the container"),
    FieldSpec("file.name", str, "base name of file.path"),
    FieldSpec("file.directory", str, "directory of file.path"),
    FieldSpec("file.target", str, "for symlink events: where the new link points"),
)}


class LazyFields(Protocol):
    """Computes costly fields on demand; returns None when it cannot."""

    def compute(self, event: Event, name: str) -> Value: ...


class Event:
    """Named field values; missing fields are computed by ``lazy`` or are None."""

    __slots__ = ("_lazy", "fields", "host_pid_start", "time")

    def __init__(self, fields: dict[str, Value], lazy: LazyFields | None = None, *,
                 time: float = 0.0, host_pid_start: int = 0) -> None:
        self.fields = fields
        self._lazy = lazy
        self.time = time
        self.host_pid_start = host_pid_start
        """The process's start time (clock ticks, /proc/PID/stat field 22): guards kills against pid reuse."""

    def get(self, name: str) -> Value:
        try:
            return self.fields[name]
        except KeyError:
            pass
        value = self._lazy.compute(self, name) if self._lazy is not None else None
        self.fields[name] = value
        return value

    @property
    def type(self) -> str:
        return str(self.fields.get("evt.type") or "")

    def to_record(self, names: Mapping[str, FieldSpec] = FIELDS) -> dict[str, Any]:
        """Every known field (lazy ones computed) as JSON-ready values, for recording and replay."""
        out: dict[str, Any] = {}
        for name in names:
            value = self.get(name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_record(), ensure_ascii=False, separators=(",", ":"))


class EventFormatError(ValueError):
    """A recorded event that is not a JSON object of known fields."""


def event_from_record(data: Any) -> Event:
    """The inverse of :meth:`Event.to_record`: types are checked against :data:`FIELDS`."""
    if not isinstance(data, dict):
        raise EventFormatError("an event must be a JSON object of field names to values")
    fields: dict[str, Value] = {}
    for name, value in data.items():
        spec = FIELDS.get(name)
        if spec is None:
            raise EventFormatError(f"unknown field {name!r}")
        fields[name] = _coerce(spec, value)
    if "evt.type" not in fields:
        raise EventFormatError("the event has no evt.type")
    return Event(fields)


def _coerce(spec: FieldSpec, value: Any) -> Value:
    if value is None:
        return None
    if spec.kind is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise EventFormatError(f"{spec.name}: expected a list of strings")
        return tuple(value)
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise EventFormatError(f"{spec.name}: expected true or false")
        return value
    if spec.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventFormatError(f"{spec.name}: expected an integer")
        return value
    if not isinstance(value, str):
        raise EventFormatError(f"{spec.name}: expected a string")
    return value


EventSink = Callable[[Event], None]
