"""What happens when a rule matches: record it, kill the process, pause or stop the container.

Recording is always done (an action nobody can see afterwards is worse than none). Killing uses
a pidfd checked against the process's start time, so a pid that was recycled between the event
and the kill never hits an innocent process. Pausing and stopping call Docker and may take
seconds; they run on a separate thread so the event loop keeps reading.

``deny`` is answered by the real-time permission event (see :mod:`hullguard.behavior.gate`).
When a deny rule only matches after the exec (it needs the command line, which the kernel does
not show before the exec completes), the process is killed instead, and the record says so.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hullguard.behavior import procfs
from hullguard.behavior.event import EventType
from hullguard.behavior.ruleset import DENY, KILL, PAUSE, STOP, Priority, RuleMatch, format_value
from hullguard.journal.record import DetectionRecord, Level, Module, RecordKind
from hullguard.objects.scanobject import ScanEvent
from hullguard.objects.uri import ObjectURI, escape_text
from hullguard.response.actions import Action

log = logging.getLogger("hullguard.behavior")

RecordFactory = Callable[[], DetectionRecord | None]
RecordSink = Callable[[RecordFactory], None]
"""Takes a function that builds the record (``JournalWriter.submit``)."""

DETECTION_TYPE = "Suspicious behaviour"
KILLED = "Process killed"
KILL_FAILED = "Kill failed (process already gone)"
PAUSED = "Container paused"
STOPPED = "Container stopped"

_EVENT_TEXT = {
    EventType.EXECVE: ScanEvent.EXECUTED.value,
    EventType.OPEN: ScanEvent.OPENED.value,
    EventType.CREATE: ScanEvent.CREATED.value,
    EventType.SYMLINK: ScanEvent.CREATED.value,
    EventType.RENAME: ScanEvent.CREATED.value,
    EventType.WRITE: ScanEvent.MODIFIED.value,
}


def level_of(priority: Priority) -> str:
    if priority <= Priority.ERROR:
        return Level.ERROR.value
    if priority <= Priority.NOTICE:
        return Level.WARNING.value
    return Level.INFO.value


def object_uri(match: RuleMatch) -> str:
    """The container's ``docker://IMAGE@ID/path`` of the file involved (or the executable)."""
    ev = match.event
    path = ev.get("file.path") if ev.type != EventType.EXECVE else None
    if not isinstance(path, str) or not path:
        exe = ev.get("proc.exe")
        path = exe if isinstance(exe, str) and exe else "/"
    cid = ev.get("container.id")
    if isinstance(cid, str) and cid:
        image = ev.get("container.image")
        return ObjectURI.docker(image if isinstance(image, str) and image else "unknown", cid, path).display()
    return ObjectURI.file(path).display()


def build_record(match: RuleMatch, actions: list[str]) -> DetectionRecord:
    ev = match.event
    rule = match.rule
    user = ev.get("user.name")
    exe = ev.get("proc.exe")
    cid = ev.get("container.id")
    tags = f" tags={','.join(rule.tags)}" if rule.tags else ""
    info = f"{match.output} [pid={format_value(ev.get('proc.pid'))} priority={rule.priority.name}{tags}]"
    return DetectionRecord(
        module=Module.BEHAVIOUR.value,
        object=object_uri(match),
        detection=escape_text(rule.name),
        type=DETECTION_TYPE,
        action="; ".join(actions),
        level=level_of(rule.priority),
        user=format_value(user) if user is not None else "",
        process=format_value(exe) if exe else "",
        event=_EVENT_TEXT.get(ev.type, ev.type),
        info=info,
        kind=RecordKind.DETECTION,
        container_id=cid if isinstance(cid, str) else "",
        container_name=format_value(ev.get("container.name")) if cid else "",
        image=format_value(ev.get("container.image")) if cid else "",
    )


def kill_process(pid: int, start: int) -> bool:
    """SIGKILL ``pid`` if it is still the process that started at ``start`` (clock ticks)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if start and procfs.start_time(pid) != start:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


class ContainerControl:
    """Pause or stop containers through the Docker API, off the event thread."""

    def __init__(self, client_factory: Callable[[], Any] | None = None, stop_timeout: int = 5) -> None:
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hullguard-behavior-docker")
        self.stop_timeout = stop_timeout

    def _api(self) -> Any:
        if self._client is None:
            if self._factory is None:
                import docker
                self._client = docker.from_env(timeout=30)
            else:
                self._client = self._factory()
        return self._client

    def submit(self, container_id: str, what: str, done: Callable[[str, bool], None]) -> None:
        def run() -> None:
            ok = False
            try:
                with self._lock:
                    c = self._api().containers.get(container_id)
                    if what == PAUSE:
                        c.pause()
                    else:
                        c.stop(timeout=self.stop_timeout)
                ok = True
            except Exception as exc:  # a container that is gone, or Docker down
                log.warning("behaviour response %s %s failed: %s", what, container_id[:12], exc)
            done(what, ok)
        self._pool.submit(run)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()


class Responder:
    """Carries out the responses of one match and journals it."""

    def __init__(self, sink: RecordSink, control: ContainerControl | None = None) -> None:
        self.sink = sink
        self.control = control or ContainerControl()
        self.matches = 0
        self.kills = 0
        self.denials = 0
        self._last_kill: tuple[int, int] = (0, 0)

    def respond(self, match: RuleMatch, *, denied: bool = False) -> list[str]:
        """Act on ``match``; ``denied`` says the real-time monitor refused the exec already."""
        self.matches += 1
        ev = match.event
        responses = match.rule.responses
        actions: list[str] = []
        if denied:
            self.denials += 1
            actions.append(Action.BLOCKED.value)
        pid = ev.get("proc.pid")
        want_kill = KILL in responses or (DENY in responses and not denied and ev.type == EventType.EXECVE
                                          and ev.get("evt.source") != "gate")
        if want_kill and isinstance(pid, int) and pid > 0 and not denied:
            if self._last_kill == (pid, ev.host_pid_start):
                actions.append(KILLED)  # another rule matched the same process: killed already
            elif kill_process(pid, ev.host_pid_start):
                self._last_kill = (pid, ev.host_pid_start)
                self.kills += 1
                actions.append(KILLED)
            else:
                actions.append(KILL_FAILED)
        cid = ev.get("container.id")
        for what in (PAUSE, STOP):
            if what in responses and isinstance(cid, str) and cid:
                self.control.submit(cid, what, functools.partial(self._container_done, match))
        if not actions:
            actions.append(Action.RETAINED.value)
        self.sink(lambda: build_record(match, actions))
        return actions

    def _container_done(self, match: RuleMatch, what: str, ok: bool) -> None:
        text = (PAUSED if what == PAUSE else STOPPED) if ok else f"Container {what} failed"
        self.sink(lambda: build_record(match, [text]))

    def close(self) -> None:
        self.control.close()


def warning_record(message: str, info: str = "") -> DetectionRecord:
    """A journal warning from the behaviour monitor itself (events lost, rules not loaded)."""
    return DetectionRecord(module=Module.BEHAVIOUR.value, object="", level=Level.WARNING.value,
                           kind=RecordKind.EVENT, detection=message, info=escape_text(info))
