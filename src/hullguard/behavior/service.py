"""The behaviour monitor as one service the agent starts: events in, rules, responses, counters.

Threads, and why each exists:

* **reader**: reads the proc connector socket and, for each exec in a container, captures the
  process's ``/proc`` facts right away (a short-lived process is gone a millisecond later).
  Host processes cost one read of their cgroup file and are skipped.
* **worker**: ancestors, rules, responses. When it falls behind, the bounded queue fills and
  further events are *counted* as dropped.
* **files**: the per-container fanotify notification groups (:mod:`hullguard.behavior.files`).
* **docker events**: marks a container's directories when it starts, unmarks them when it dies.

Every loss is counted (kernel socket overruns, per-CPU sequence gaps, queue overflow, fanotify
queue overflow, processes gone before they could be read) and exposed by :meth:`stats`; a
Warning record goes to the journal when a count grows (at most once per ``warn_interval``).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from hullguard.behavior.enrich import ContainerLookup, Enricher
from hullguard.behavior.event import Event
from hullguard.behavior.files import FileWatcher
from hullguard.behavior.gate import ExecGate
from hullguard.behavior.procconn import PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_FORK, ProcConnector, ProcEvent
from hullguard.behavior.procfs import ProcInfo, open_proc
from hullguard.behavior.respond import ContainerControl, RecordSink, Responder, warning_record
from hullguard.behavior.ruleset import DENY, RuleError, RuleSet, load_rules
from hullguard.runtime.cgroup import container_from_cgroup_bytes, read_cgroup

log = logging.getLogger("hullguard.behavior")


@dataclass(frozen=True)
class ServiceOptions:
    """What the service needs from ``[behavior]`` (agent.config.BehaviorConfig has these fields)."""

    default_rules: bool = True
    rules_files: tuple[str, ...] = ()
    responses: dict[str, Any] | None = None
    host_processes: bool = False
    file_events: bool = True
    record_events: str = ""
    queue_size: int = 65536
    warn_interval: float = 10.0


def options_from(config: Any) -> ServiceOptions:
    """Take the known fields from any config object (BehaviorConfig or ServiceOptions)."""
    if isinstance(config, ServiceOptions):
        return config
    kw = {name: getattr(config, name) for name in ServiceOptions.__dataclass_fields__ if hasattr(config, name)}
    return ServiceOptions(**kw)


def load_configured_rules(opts: ServiceOptions) -> RuleSet:
    """Default rules (optional) + the configured files + per-rule response overrides."""
    rules = load_rules(opts.rules_files, include_default=opts.default_rules)
    overrides: dict[str, list[str]] = {}
    for name, value in (opts.responses or {}).items():
        if isinstance(value, str):
            overrides[name] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            overrides[name] = list(value)
        else:
            raise ValueError(f"behavior.responses.{name}: expected a list of responses")
    return rules.with_responses(overrides) if overrides else rules


class BehaviorService:
    def __init__(self, config: Any, journal: RecordSink, docker_meta: ContainerLookup | None = None, *,
                 rules: RuleSet | None = None, control: ContainerControl | None = None,
                 follow_docker: bool = True) -> None:
        self.options = options_from(config)
        self._sink = journal
        self.enricher = Enricher(docker_meta)
        self.responder = Responder(journal, control)
        self._rules = rules if rules is not None else load_configured_rules(self.options)
        self.gate = ExecGate(lambda: self._rules, self.enricher, self.responder)
        self._queue: collections.deque[tuple[ProcInfo, tuple[ProcInfo, ...]]] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._conn: ProcConnector | None = None
        self._threads: list[threading.Thread] = []
        self.files: FileWatcher | None = None
        self._follower: Any = None
        self._follow_docker = follow_docker
        self._docker_meta = docker_meta
        self._record_stream: TextIO | None = None
        self._record_lock = threading.Lock()
        # counters
        self.received = 0
        self.handled = 0
        self.container_execs = 0
        self.queue_dropped = 0
        self.unenriched = 0
        self.replaced_before_read = 0
        self.open_proc = open_proc
        self._reader_busy = False
        self.file_events = 0
        self.gate_deduplicated = 0
        self.errors = 0
        self._warned: dict[str, int] = {}
        self._last_warn = 0.0

    # --- rules ----------------------------------------------------------------------------
    @property
    def rules(self) -> RuleSet:
        return self._rules

    def reload(self) -> str | None:
        """Load the rule files again; on error keep the current rules and return the error text."""
        try:
            new = load_configured_rules(self.options)
        except (RuleError, ValueError) as exc:
            text = str(exc)
            log.error("behaviour rules not reloaded, keeping the last good set: %s", text)
            self._sink(lambda: warning_record("Behaviour rules not reloaded; last good rule set kept", text))
            return text
        self._rules = new
        return None

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._conn = ProcConnector(PROC_EVENT_FORK | PROC_EVENT_EXEC | PROC_EVENT_EXIT)
        if self.options.record_events:
            path = Path(self.options.record_events)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._record_stream = path.open("a", encoding="utf-8")
        for name, target in (("reader", self._read_loop), ("worker", self._work_loop),
                             ("stats", self._stats_loop)):
            t = threading.Thread(target=target, name=f"hullguard-behavior-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        if self.options.file_events:
            self.files = FileWatcher(self._on_file)
            self.files.start()
            if self._follow_docker:
                from hullguard.runtime.docker import DockerEventFollower
                self._follower = DockerEventFollower(self._on_docker, self._resync)
                self._follower.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._follower is not None:
            self._follower.stop()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self.files is not None:
            self.files.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.responder.close()
        if self._record_stream is not None:
            self._record_stream.close()

    # --- containers for file events ---------------------------------------------------------
    def watch_container(self, container_id: str, merged_dir: str, pid: int = 0) -> int:
        if self.files is None:
            return 0
        try:
            return self.files.add(container_id, merged_dir, pid)
        except OSError as exc:  # e.g. EMFILE: fs.fanotify.max_user_groups (128) reached
            self.errors += 1
            text = f"container {container_id[:12]}: {exc.strerror or exc}"
            log.warning("behaviour: cannot watch file events in %s", text)
            self._sink(lambda: warning_record("Behaviour file events not watched", text))
            return 0

    def _on_docker(self, action: str, container_id: str, _attrs: dict[str, Any]) -> None:
        if action == "start":
            self._watch_by_id(container_id)
        elif action in ("die", "destroy") and self.files is not None:
            self.files.remove(container_id)
            self.enricher.per_container.forget(container_id)

    def _watch_by_id(self, container_id: str) -> None:
        meta = self._docker_meta
        info = None
        if meta is not None:
            inspect = getattr(meta, "inspect", None)
            info = inspect(container_id) if inspect is not None else meta.get(container_id)
        if info is not None and info.running:
            self.watch_container(info.id, info.merged_dir, info.pid)

    def _resync(self) -> None:
        meta = self._docker_meta
        lister = getattr(meta, "list", None) if meta is not None else None
        if lister is None or self.files is None:
            return
        running = {i.id: i for i in lister()}
        for cid in self.files.containers():
            if cid not in running:
                self.files.remove(cid)
        for info in running.values():
            if info.running:
                self.watch_container(info.id, info.merged_dir, info.pid)

    # --- threads --------------------------------------------------------------------------
    def _read_loop(self) -> None:
        """Read the socket and capture each container process's /proc facts at once.

        Capturing here, not in the worker, matters in an exec storm: a short-lived process is
        usually gone a millisecond after its exec, so the read must not wait behind the rules.
        """
        conn = self._conn
        assert conn is not None
        while not self._stop.is_set():
            try:
                events = conn.read(0.5)
            except OSError as exc:
                self.errors += 1
                log.warning("proc connector: %s", exc)
                time.sleep(0.1)
                continue
            if events:
                self._reader_busy = True
                try:
                    self.accept(events)
                finally:
                    self._reader_busy = False

    def accept(self, events: Sequence[ProcEvent]) -> None:
        """The reader's part, in the kernel's order: forks and exits keep the process table in
        step, and each exec is captured together with its ancestors *as they are now*, so
        ``proc.pname`` is the parent at the time of the exec, whatever it ran since."""
        self.received += len(events)
        table = self.enricher.table
        own = os.getpid()
        captured: list[tuple[ProcInfo, tuple[ProcInfo, ...]]] = []
        last_exec = {ev.tgid: i for i, ev in enumerate(events) if ev.is_exec}
        for i, ev in enumerate(events):
            if ev.is_fork:
                if ev.pid == ev.tgid and ev.tgid != ev.parent_tgid:  # a process, not a thread
                    table.on_fork(ev.tgid, ev.parent_tgid)
            elif ev.is_exit:
                if ev.pid == ev.tgid:
                    table.mark_stale(ev.tgid)
            elif ev.is_exec and ev.tgid != own:
                if last_exec[ev.tgid] != i:
                    # the same process exec'd again later in this batch (nc -e sh): its /proc
                    # shows the later program now, so this image cannot be read any more
                    self.replaced_before_read += 1
                    continue
                item = self._capture(ev.tgid)
                if item is not None:
                    captured.append(item)
                else:
                    table.mark_stale(ev.tgid)  # it runs something we did not read
        if not captured:
            return
        limit = self.options.queue_size
        with self._cond:
            for item in captured:
                if len(self._queue) >= limit:
                    self.queue_dropped += 1
                else:
                    self._queue.append(item)
            self._cond.notify()

    def _capture(self, pid: int) -> tuple[ProcInfo, tuple[ProcInfo, ...]] | None:
        d = self.open_proc(pid)
        if d is None:
            self.unenriched += 1  # exited before it could be read: counted, never silent
            return None
        try:
            cid = self.container_of(pid, d)
            if cid is None:
                self.unenriched += 1
                return None
            if not cid and not self.options.host_processes:
                return None
            if cid:
                self.container_execs += 1
            table = self.enricher.table
            info = table.on_exec(pid, cid, d)
        finally:
            os.close(d)
        if info is None:
            self.unenriched += 1
            return None
        return info, table.snapshot_ancestors(info)

    @staticmethod
    def container_of(pid: int, dir_fd: int | None = None) -> str | None:
        """The container id of ``pid`` ("" on the host), None when it has exited."""
        raw = read_cgroup(pid, dir_fd)
        if raw is None:
            return None
        cg = container_from_cgroup_bytes(raw)
        return cg.id if cg else ""

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(0.5)
            self.drain()

    def drain(self) -> None:
        """Evaluate the rules on every queued exec (the worker's part)."""
        with self._cond:
            batch = list(self._queue)
            self._queue.clear()
        for info, ancestors in batch:
            try:
                self.process(self.enricher.exec_event(info, ancestors=ancestors))
            except Exception:
                self.errors += 1
                log.exception("behaviour event failed")
            self.handled += 1

    def _on_file(self, evt_type: str, pid: int, container_id: str, path: str, target: str) -> None:
        self.file_events += 1
        self.wait_for_reader()
        self.process(self.enricher.file_event(evt_type, pid, container_id, path, target))

    def wait_for_reader(self, timeout: float = 0.1) -> bool:
        """Let the reader handle the process events queued before a file event (bounded wait).

        The kernel queued the exec of the program that touched the file before the file event,
        but on another socket: ``sh -c 'cat /etc/shadow'`` is cat under the shell's pid, and if
        the file event were enriched first it would name sh. File events are few (sensitive
        directories only), so waiting a moment for the reader costs nothing that matters.
        """
        conn = self._conn
        if conn is None:
            return True
        deadline = time.monotonic() + timeout
        while self._reader_busy or conn.has_pending():
            if time.monotonic() >= deadline or self._stop.is_set():
                return False
            time.sleep(0.001)
        return True

    def process(self, event: Event) -> None:
        """Evaluate the rules on one event and respond to every match."""
        if self._record_stream is not None:
            line = event.to_json()
            with self._record_lock:
                self._record_stream.write(line + "\n")
                self._record_stream.flush()
        from_proc = event.fields.get("evt.source") == "proc"
        for match in self._rules.evaluate(event):
            if from_proc:
                pid, exe = self._pid_of(event), str(event.get("proc.exe") or "")
                if self.gate.recorded.claim(pid, match.name, exe):
                    self.gate_deduplicated += 1  # the exec gate recorded this execution already
                    continue
                if DENY in match.rule.responses:
                    self.gate.proc_recorded.add(pid, match.name, exe)  # for the gate's caller check
            self.responder.respond(match)

    @staticmethod
    def _pid_of(event: Event) -> int:
        pid = event.fields.get("proc.pid")
        return pid if isinstance(pid, int) else 0

    def _stats_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.check_losses()

    def check_losses(self, *, force: bool = False) -> None:
        """Journal a Warning when a loss counter grew (rate-limited)."""
        now = time.monotonic()
        if not force and now - self._last_warn < self.options.warn_interval:
            return
        current = self.losses()
        grown = {k: v - self._warned.get(k, 0) for k, v in current.items() if v > self._warned.get(k, 0)}
        if not grown:
            return
        self._warned = dict(current)
        self._last_warn = now
        text = ", ".join(f"{k}={v}" for k, v in sorted(grown.items()))
        log.warning("behaviour monitoring lost events: %s", text)
        self._sink(lambda: warning_record("Behaviour monitoring lost events", text))

    def losses(self) -> dict[str, int]:
        conn = self._conn
        out = {
            "kernel_overruns": conn.overruns if conn else 0,
            "kernel_lost": conn.lost if conn else 0,
            "queue_dropped": self.queue_dropped,
            "file_overflows": self.files.overflows if self.files else 0,
        }
        return {k: v for k, v in out.items() if v}

    def stats(self) -> dict[str, int]:
        conn = self._conn
        return {
            "received": self.received, "handled": self.handled, "container_execs": self.container_execs,
            "unenriched": self.unenriched, "replaced_before_read": self.replaced_before_read,
            "queue_dropped": self.queue_dropped,
            "kernel_overruns": conn.overruns if conn else 0, "kernel_lost": conn.lost if conn else 0,
            "file_events": self.file_events, "file_overflows": self.files.overflows if self.files else 0,
            "matches": self.responder.matches, "kills": self.responder.kills,
            "denials": self.responder.denials, "gate_asked": self.gate.asked,
            "gate_recorded": self.gate.records, "gate_callers_denied": self.gate.callers_denied,
            "gate_deduplicated": self.gate_deduplicated, "errors": self.errors,
            "rules": len(self._rules.rules), "queued": len(self._queue),
        }

    def report(self) -> dict[str, Any]:
        """The counters the agent exposes (``<run_dir>/agent.stats.json``, ``hullguard status``):
        what came in, what matched, and every loss by where it happened."""
        s = self.stats()
        return {
            "events": s["received"], "container_execs": s["container_execs"], "handled": s["handled"],
            "file_events": s["file_events"], "matches": s["matches"], "denials": s["denials"],
            "kills": s["kills"], "gate_asked": s["gate_asked"], "gate_recorded": s["gate_recorded"],
            "gate_callers_denied": s["gate_callers_denied"],
            "dropped": {"kernel_lost": s["kernel_lost"], "kernel_overruns": s["kernel_overruns"],
                        "queue": s["queue_dropped"], "file_overflows": s["file_overflows"]},
            "gone_before_read": s["unenriched"], "replaced_before_read": s["replaced_before_read"],
            "errors": s["errors"], "rules": s["rules"],
        }

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is empty (tests and the benchmark)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._queue:
                return True
            time.sleep(0.01)
        return False

