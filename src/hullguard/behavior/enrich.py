"""Turn kernel facts (a pid, a path) into rule events: process, ancestors, user, container.

Container names and images come from the same Docker metadata cache real-time protection uses
(``runtime.docker.DockerMetadata``), the container id from the same cgroup reader
(``runtime.cgroup``): one source of container context for both.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from hullguard.behavior import procfs
from hullguard.behavior.event import Event, EventType, Value
from hullguard.behavior.procfs import ProcessTable, ProcInfo
from hullguard.runtime.docker import ContainerInfo
from hullguard.runtime.passwd import users_in_root


class ContainerLookup(Protocol):
    def get(self, container_id: str) -> ContainerInfo | None: ...


class NoContainers:
    def get(self, container_id: str) -> ContainerInfo | None:
        return None


class _PerContainer:
    """Facts that hold for a whole container (its users, a mounted Docker socket), cached."""

    def __init__(self, ttl: float = 30.0) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._users: dict[str, tuple[float, dict[int, str]]] = {}
        self._docker_sock: dict[str, bool] = {}

    def users(self, container_id: str, pid: int) -> dict[int, str]:
        now = time.monotonic()
        with self._lock:
            hit = self._users.get(container_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        users = users_in_root(f"/proc/{pid}/root")
        if users:  # an unreadable passwd (process gone) is asked again next time
            with self._lock:
                self._users[container_id] = (now, users)
        return users

    def docker_sock(self, container_id: str, pid: int) -> bool:
        with self._lock:
            hit = self._docker_sock.get(container_id)
        if hit is not None:
            return hit
        value = procfs.docker_socket_inside(pid)
        with self._lock:
            self._docker_sock[container_id] = value
        return value

    def forget(self, container_id: str) -> None:
        with self._lock:
            self._users.pop(container_id, None)
            self._docker_sock.pop(container_id, None)


GATE_CALLER_FIELDS = frozenset(("proc.ppid", "proc.vpid", "proc.tty", "proc.is_tty", "proc.pname", "proc.pexe",
                                "proc.pcmdline", "proc.aname", "user.uid", "user.loginuid"))
"""What a gate event knows from the process calling execve (see :meth:`Enricher.gate_event`)."""


class Enricher:
    """Builds :class:`Event` objects; the costly fields are computed lazily (see LazyFields)."""

    def __init__(self, containers: ContainerLookup | None = None, table: ProcessTable | None = None,
                 *, docker_socket: str = "/var/run/docker.sock") -> None:
        self.containers: ContainerLookup = containers or NoContainers()
        self.table = table or ProcessTable()
        self.per_container = _PerContainer()
        self.docker_socket = docker_socket
        self._host_users: dict[int, str] = {}

    # --- events -----------------------------------------------------------------------------
    def exec_event(self, info: ProcInfo, *, source: str = "proc",
                   ancestors: Sequence[ProcInfo] | None = None) -> Event:
        """``ancestors``: taken when the event arrived (ProcessTable.snapshot_ancestors); without
        them they are looked up now, which may already show a parent's later program."""
        fields = self.process_fields(info, ancestors)
        fields["evt.type"] = EventType.EXECVE
        fields["evt.source"] = source
        return Event(fields, self, time=time.time(), host_pid_start=info.start)

    def gate_event(self, pid: int, path: str, container_id: str) -> Event:
        """An execution about to happen: the caller's process is still the old image, so the
        new program is known only by its path (no command line yet).

        The caller's facts (parent, user, tty) are filled in only when a rule asks for one
        (:meth:`compute`): this runs while the kernel holds the exec, and most rules decide on
        the container and the path first, so most execs never pay for a /proc read here.
        """
        name = os.path.basename(path)
        fields: dict[str, Value] = {
            "evt.type": EventType.EXECVE, "evt.source": "gate", "proc.pid": pid,
            "proc.name": name, "proc.exe": path, "proc.cmdline": None, "proc.args": None,
            "proc.argv": None,
        }
        self._container_fields(fields, container_id)
        return Event(fields, self, time=time.time())

    def _caller_fields(self, event: Event, pid: int) -> None:
        """The fields a gate event takes from the process calling execve: it becomes the new
        program, so its parent stays the parent and its user and tty are the new program's."""
        caller = self.table.get(pid)
        if caller is None:
            return
        for k, v in self.process_fields(caller).items():
            if k in GATE_CALLER_FIELDS and k not in event.fields:
                event.fields[k] = v
        event.host_pid_start = caller.start

    def file_event(self, evt_type: str, pid: int, container_id: str, path: str, target: str = "") -> Event:
        info = self.table.get(pid) if pid > 0 else None
        fields: dict[str, Value] = self.process_fields(info) if info is not None else {"proc.pid": pid}
        fields["evt.type"] = evt_type
        fields["evt.source"] = "file"
        self._container_fields(fields, container_id)
        fields["file.path"] = path
        fields["file.name"] = os.path.basename(path)
        fields["file.directory"] = os.path.dirname(path) or "/"
        if evt_type == EventType.SYMLINK:
            fields["file.target"] = target
        return Event(fields, self, time=time.time(), host_pid_start=info.start if info else 0)

    def process_fields(self, info: ProcInfo, ancestors: Sequence[ProcInfo] | None = None) -> dict[str, Value]:
        if ancestors is None:
            ancestors = self.table.ancestors(info)
        parent = ancestors[0] if ancestors else None
        fields: dict[str, Value] = {
            "proc.pid": info.pid, "proc.ppid": info.ppid, "proc.vpid": info.vpid,
            "proc.name": info.name, "proc.exe": info.exe, "proc.cmdline": info.cmdline,
            "proc.args": " ".join(info.argv[1:]), "proc.argv": info.argv,
            "proc.tty": info.tty, "proc.is_tty": info.tty != 0,
            "proc.pname": parent.name if parent else None,
            "proc.pexe": parent.exe if parent else None,
            "proc.pcmdline": parent.cmdline if parent else None,
            "proc.aname": tuple(a.name for a in ancestors),
            "user.uid": info.uid if info.uid >= 0 else None,
            "user.loginuid": info.loginuid if info.loginuid != 0xFFFFFFFF else -1,
        }
        self._container_fields(fields, info.container_id)
        return fields

    def _container_fields(self, fields: dict[str, Value], container_id: str) -> None:
        fields["container.id"] = container_id
        if not container_id:
            fields["container.name"] = fields["container.image"] = "host"
            return
        meta = self.containers.get(container_id)
        fields["container.name"] = meta.name if meta else ""
        fields["container.image"] = meta.image if meta else ""

    # --- LazyFields -------------------------------------------------------------------------
    def compute(self, event: Event, name: str) -> Value:
        pid = event.fields.get("proc.pid")
        cid = event.fields.get("container.id")
        if not isinstance(pid, int):
            return None
        if name in GATE_CALLER_FIELDS and event.fields.get("evt.source") == "gate":
            self._caller_fields(event, pid)
            return event.fields.get(name)
        cid = cid if isinstance(cid, str) else ""
        if name == "user.name":
            uid = event.get("user.uid")
            if not isinstance(uid, int):
                return None
            if cid:
                meta = self.containers.get(cid)
                probe = meta.pid if meta and meta.pid else pid  # the event's process may be gone
                return self.per_container.users(cid, probe).get(uid, str(uid))
            return self._host_user(uid)
        if name == "proc.exe_upper_layer":
            exe = event.fields.get("proc.exe")
            if not cid or not isinstance(exe, str) or not exe.startswith("/"):
                return False if not cid else None
            meta = self.containers.get(cid)
            return procfs.in_upper_layer(meta.upper_dir, exe) if meta else None
        if name in ("proc.stdin_type", "proc.stdout_type"):
            if event.fields.get("evt.source") == "gate":
                return None
            return procfs.fd_type(pid, 0 if name == "proc.stdin_type" else 1) or None
        if name == "container.docker_sock":
            if not cid:
                return False
            meta = self.containers.get(cid)
            probe = meta.pid if meta and meta.pid else pid
            return self.per_container.docker_sock(cid, probe)
        return None

    def _host_user(self, uid: int) -> str:
        name = self._host_users.get(uid)
        if name is None:
            import pwd
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._host_users[uid] = name
        return name
