"""The agent daemon: wires the engine, the journal, real-time protection and the container runtime.

Start order matters. Scan workers start first (they load the signatures, which takes a moment,
and they must not exist after the fanotify group so they can never inherit it), then the group
and its reader, and only then the marks: from the first mark on, someone is reading. Stop order
is the reverse, except that the group is closed right after the reader stops, because closing
it is what lets every waiting process through and drops every mark.

Signals: SIGTERM and SIGINT stop the agent; SIGHUP reloads the signatures (new scan workers load
them, then the kernel-cached verdicts are flushed); a signature set that does not load is
logged and journaled and the old one stays in use.

Readiness: when everything is marked the agent writes ``<run_dir>/agent.ready`` (JSON with the
pid and the marked filesystems) and prints ``hullguard agent: ready`` on stdout; tests and the
benchmark wait for either.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from hullguard.agent import stats as agent_stats
from hullguard.agent.config import Config, RealtimeConfig
from hullguard.agent.imagerecords import layer_cache_path
from hullguard.agent.imagewatch import ImageServices
from hullguard.agent.journal_writer import JournalWriter
from hullguard.agent.schedule import Scheduler
from hullguard.behavior.service import BehaviorService
from hullguard.journal.record import DetectionRecord, Level, Module, RecordKind
from hullguard.journal.store import JournalStore
from hullguard.realtime.exclusions import Exclusions
from hullguard.realtime.fanotify import Fanotify, FanotifyError
from hullguard.realtime.lockedfiles import sqlite_files
from hullguard.realtime.marks import MarkTarget
from hullguard.realtime.monitor import Monitor, MonitorSettings
from hullguard.realtime.pool import PoolError, ProcessScanPool
from hullguard.response.quarantine import QuarantineStore
from hullguard.runtime.docker import DockerEventFollower, DockerMetadata
from hullguard.runtime.mounts import Mount, MountWatcher, read_mounts

log = logging.getLogger("hullguard.agent")

READY_FILE = "agent.ready"
PID_FILE = "agent.pid"


class AgentError(Exception):
    """The agent cannot start; the message says why and what to do."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise AgentError("hullguard agent must run as root (fanotify needs CAP_SYS_ADMIN); "
                         "run it with sudo or as a system service")


def settings_from(cfg: RealtimeConfig, config: Config) -> MonitorSettings:
    return MonitorSettings(
        open_perm=cfg.open_perm, deadline=cfg.deadline, fail_closed=cfg.fail_closed,
        cache_size=cfg.cache_size, kernel_cache=cfg.kernel_cache, audit=cfg.audit,
        exclusions=Exclusions(cfg.exclude_paths, cfg.exclude_processes, cfg.exclude_users,
                              cfg.exclude_containers, cfg.exclude_images),
        policy=config.response)


def _raise_nofile() -> None:
    """Every event in flight holds a file descriptor: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 1 << 20)), hard))


@dataclass
class ContainerProtection:
    """Keeps one mark per running Docker container: mount watcher + Docker events + resyncs."""

    monitor: Monitor
    docker: DockerMetadata
    root: str = "/var/lib/docker"
    _watcher: MountWatcher | None = None
    _events: DockerEventFollower | None = None
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def overlay_prefix(self) -> str:
        return os.path.join(self.root, "overlay2") + "/"

    def _is_container_overlay(self, m: Mount) -> bool:
        # <root>/overlay2/<layer>/merged; "<layer>-init" is mounted for a moment while a
        # container is created, and nothing runs in it
        return (m.fstype == "overlay" and m.mount_point.startswith(self.overlay_prefix)
                and m.mount_point.endswith("/merged") and not m.mount_point.endswith("-init/merged"))

    def on_mounts(self, mounts: list[Mount]) -> None:
        if self._stopped:
            return
        marks = self.monitor.marks
        for m in mounts:
            if self._is_container_overlay(m) and marks.target(m.st_dev) is None:
                marks.add_overlay(m.mount_point, "", mounts)
        for gone in marks.forget_missing(mounts):
            log.info("container filesystem gone: %s", gone.path)

    def on_event(self, action: str, container_id: str, attrs: dict[str, Any]) -> None:
        if self._stopped:
            return
        if action == "start":
            info = self.docker.inspect(container_id)
            if info is not None and info.merged_dir:
                self.monitor.marks.add_overlay(info.merged_dir, info.id)
        elif action == "die":
            info = self.docker.cached(container_id)
            if info is not None and info.merged_dir:
                self.monitor.marks.remove_overlay(info.merged_dir)
        elif action == "destroy":
            self.docker.forget(container_id)
        elif action == "rename":
            self.docker.inspect(container_id)

    def resync(self) -> None:
        """After (re)connecting to Docker: mark every running container, forget vanished overlays."""
        if self._stopped:
            return
        mounts = read_mounts()
        for info in self.docker.list():
            if info.merged_dir:
                self.monitor.marks.add_overlay(info.merged_dir, info.id, mounts)
        self.on_mounts(mounts)

    def start(self) -> None:
        self.root = self.docker.root_dir()
        self.resync()
        self._watcher = MountWatcher(self.on_mounts)
        self._watcher.start()
        self._events = DockerEventFollower(self.on_event, self.resync)
        self._events.start()

    def stop(self) -> None:
        self._stopped = True
        if self._events is not None:
            self._events.stop()
        if self._watcher is not None:
            self._watcher.stop()
        self.docker.close()


class Agent:
    """``hullguard agent``: run until SIGTERM/SIGINT."""

    def __init__(self, config: Config, *, out: Callable[[str], None] = print) -> None:
        self.config = config
        self.out = out
        self.stop_event = threading.Event()
        self.run_dir = Path(config.run_dir)
        self.store: JournalStore | None = None
        self.writer: JournalWriter | None = None
        self.pool: ProcessScanPool | None = None
        self.fan: Fanotify | None = None
        self.monitor: Monitor | None = None
        self.containers: ContainerProtection | None = None
        self.scheduler: Scheduler | None = None
        self.behavior: BehaviorService | None = None
        self.images: ImageServices | None = None
        self.on_record: Callable[[DetectionRecord], None] | None = None
        self._wake = threading.Event()
        self._reload_requested = False
        self._stats_stop = threading.Event()
        self._stats_thread: threading.Thread | None = None

    # --- start ------------------------------------------------------------------------------
    def _check(self) -> None:
        require_root()

    def _start_realtime(self) -> list[MarkTarget]:
        cfg = self.config.realtime
        workers = cfg.workers or max(2, os.cpu_count() or 2)
        self.pool = ProcessScanPool(self.config.engine, workers=workers, max_queue=cfg.max_pending,
                                    hard_timeout=cfg.hard_timeout,
                                    on_error=lambda e: log.warning("scan pool: %s", e),
                                    on_restart=lambda pid, why: log.warning(
                                        "scan worker %d restarted: %s", pid, why))
        try:
            self.pool.start()
        except PoolError as exc:
            raise AgentError(str(exc)) from exc
        try:
            self.fan = Fanotify.for_content(audit=cfg.audit)
        except FanotifyError as exc:
            hint = {errno.EPERM: "run as root", errno.ENOSYS: "the kernel lacks fanotify",
                    errno.EINVAL: "the kernel lacks fanotify permission events "
                                  "(CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"}.get(exc.errno or 0, "")
            raise AgentError(f"fanotify is unavailable: {exc.strerror}" + (f" ({hint})" if hint else "")
                             + "; start with --no-realtime to run without real-time protection") from exc
        writer = self.writer
        assert writer is not None
        quarantine = QuarantineStore.for_state_dir(
            self.config.state_path, max_size=self.config.response.quarantine_max_size, journal=self.store,
            user="hullguard agent")
        self.monitor = Monitor(self.fan, self.pool, writer.submit, settings_from(cfg, self.config),
                               containers=None, quarantine=quarantine)
        # before any filesystem mark: once marked, a reader of the journal would cost the agent
        # its SQLite locks (realtime/lockedfiles.py)
        self.monitor.locked.add(sqlite_files(self.config.journal_path))
        self.monitor.start()
        for path in cfg.host_paths:
            try:
                self.monitor.marks.add_host(path)
            except OSError as exc:
                raise AgentError(f"realtime.host_paths: cannot protect {path}: "
                                 f"{exc.strerror or exc}") from exc
        if cfg.containers:
            docker = DockerMetadata()
            self.monitor.containers = docker
            self.containers = ContainerProtection(self.monitor, docker)
            self.containers.start()
        return self.monitor.marks.targets()

    def _start_behavior(self) -> None:
        """Behaviour monitoring; shares the Docker metadata and, through the exec gate, the
        permission events of real-time protection (behavior/service.py)."""
        writer = self.writer
        assert writer is not None
        docker = self.containers.docker if self.containers is not None else DockerMetadata()
        try:
            self.behavior = BehaviorService(self.config.behavior, writer.submit, docker)
            self.behavior.start()
        except ValueError as exc:  # RuleError (file:line:col) or a bad behavior.responses entry
            raise AgentError(f"behaviour rules: {exc}") from exc
        except OSError as exc:
            raise AgentError(f"behaviour monitoring cannot start: {exc.strerror or exc} "
                             "(set behavior.enabled = false to run without it)") from exc
        if self.monitor is not None:
            self.monitor.exec_gate = self.behavior.gate.should_deny
            self.monitor.exec_gate_host = self.behavior.gate.needs_host

    def _start_images(self) -> None:
        """Image scanning on deployment (agent/imagewatch.py): detect mode records the images of
        new containers, block mode also serves the Docker authorization plugin."""
        writer = self.writer
        assert writer is not None
        try:
            self.images = ImageServices(self.config, writer.submit)
            self.images.start()
        except ValueError as exc:  # SignatureError names file:line
            raise AgentError(f"image scanning: {exc}") from exc
        except OSError as exc:
            raise AgentError(f"images.gate = {self.config.images.gate}: cannot start: {exc.strerror or exc} "
                             f"(plugin socket {self.config.images.plugin_dir}; set images.gate = \"off\" "
                             "to run without it)") from exc

    def start(self) -> None:
        self._check()
        _raise_nofile()
        self.run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.store = JournalStore.open(self.config.journal_path)
        self.writer = JournalWriter(self.store, on_record=self.on_record)
        self.writer.start()
        targets: list[MarkTarget] = []
        if self.config.realtime.enabled:
            targets = self._start_realtime()
        if self.config.behavior.enabled:
            self._start_behavior()
        if self.config.images.gate != "off":
            self._start_images()
            if self.monitor is not None:  # the layer cache is open (and locked) from here on
                self.monitor.locked.add(sqlite_files(layer_cache_path(self.config)))
        # after the monitor: the scheduled scans' worker processes descend from this process,
        # so the monitor never scans their accesses
        self.scheduler = Scheduler(self.config)
        self.scheduler.start()
        self._write_ready(targets)
        self._start_stats()

    def _start_stats(self) -> None:
        """Counters for `hullguard status` (agent/stats.py), rewritten every few seconds."""
        self.write_stats()
        self._stats_thread = threading.Thread(target=self._stats_loop, name="hullguard-stats", daemon=True)
        self._stats_thread.start()

    def _stats_loop(self) -> None:
        while not self._stats_stop.wait(agent_stats.INTERVAL):
            self.write_stats()

    def write_stats(self) -> None:
        try:
            agent_stats.write(self.run_dir, agent_stats.collect(
                behavior=self.behavior, monitor=self.monitor, writer=self.writer))
        except Exception as exc:  # a full disk must not stop protection
            log.warning("cannot write %s: %s", agent_stats.STATS_FILE, exc)

    def _write_ready(self, targets: list[MarkTarget]) -> None:
        (self.run_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        info = {"pid": os.getpid(), "realtime": self.config.realtime.enabled,
                "workers": sorted(self.pool.pids()) if self.pool else [],
                "images": self.images.mode if self.images else "off",
                "marks": [{"kind": t.kind, "path": t.path, "container": t.container_id} for t in targets]}
        tmp = self.run_dir / (READY_FILE + ".tmp")
        tmp.write_text(json.dumps(info) + "\n")
        tmp.replace(self.run_dir / READY_FILE)
        hosts = sum(1 for t in targets if t.kind == "host")
        self.out(f"hullguard agent: ready (pid {os.getpid()}, {hosts} host filesystems, "
                 f"{len(targets) - hosts} containers)")

    # --- run and stop -----------------------------------------------------------------------
    def _signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            log.info("stopping on %s", signal.Signals(signum).name)
            self.stop_event.set()
        self._wake.set()

    def run(self) -> int:
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            self.start()
            while not self.stop_event.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                if self._reload_requested and not self.stop_event.is_set():
                    self._reload_requested = False
                    self.reload()
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        return 0

    def reload(self) -> bool:
        """Reload the signatures (SIGHUP); False, with the old ones kept, when they do not load."""
        if self.behavior is not None:
            self.behavior.reload()  # an invalid rule file is journaled; the last good rules stay
        if self.images is not None:  # the images' in-process engine
            why = self.images.reload()
            if self.pool is None:  # with real-time protection the pool's reload reports it
                self._journal_event(Level.ERROR if why else Level.INFO,
                                    f"signature reload failed, the loaded signatures stay in use: {why}" if why
                                    else "signatures reloaded (image scanning)")
        if self.pool is None or self.monitor is None:
            return False
        before = self.pool.db_version
        try:
            self.pool.reload()
        except PoolError as exc:
            log.error("signature reload failed, the loaded signatures stay in use: %s", exc)
            self._journal_event(Level.ERROR, f"signature reload failed, the loaded signatures stay in "
                                             f"use: {exc}")
            return False
        self.monitor.flush_cached_verdicts()
        after = self.pool.db_version
        log.info("signatures reloaded (database %s -> %s)", before, after)
        self._journal_event(Level.INFO, f"signatures reloaded (database {before} -> {after})")
        return True

    def _journal_event(self, level: Level, info: str) -> None:
        if self.writer is not None:
            record = DetectionRecord(module=Module.AGENT.value, object="hullguard-agent", level=level.value,
                                     info=info, kind=RecordKind.EVENT, process="hullguard agent")
            self.writer.submit(lambda: record)

    def stop(self) -> None:
        self._stats_stop.set()
        if self._stats_thread is not None:
            self._stats_thread.join(timeout=5)
        if self.scheduler is not None:
            self.scheduler.stop()
        for name in (READY_FILE, PID_FILE, agent_stats.STATS_FILE):
            with contextlib.suppress(OSError):
                (self.run_dir / name).unlink()
        if self.behavior is not None:
            self.behavior.stop()
        if self.images is not None:
            self.images.stop()
        if self.containers is not None:
            self.containers.stop()
        if self.monitor is not None:
            self.monitor.stop()
        if self.fan is not None:
            self.fan.close()  # every mark is gone and nobody waits on us any more
        if self.pool is not None:
            self.pool.stop()
        if self.writer is not None:
            self.writer.stop()
            if self.writer.dropped:
                log.warning("%d journal records were dropped (journal too slow)", self.writer.dropped)
        if self.store is not None:
            self.store.close()
        if self.monitor is not None:
            self.monitor.locked.release()
