"""Scheduled scans: cron expressions from the configuration, run by the agent.

Each firing is an ordinary on-demand scan (:func:`hullguard.agent.ondemand.run_scan`) and so a
scan session of its own in the journal, its targets resolved at run time (containers come and
go). Jobs run one at a time on one thread; a firing that comes while a scan is still running is
skipped, not queued, so a slow scan never piles up runs. Cron parsing is ``croniter``'s.

Configuration::

    [schedule.jobs.nightly]
    cron = "0 3 * * *"
    targets = ["/srv", "container:web"]
    all_containers = true
    clean = true            # apply the [response] policy (default: only report)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from croniter import croniter

from hullguard.journal.record import DetectionRecord, Level, Module, RecordKind
from hullguard.objects.uri import escape_text

if TYPE_CHECKING:
    from hullguard.agent.config import Config, ScheduleConfig
    from hullguard.agent.ondemand import ScanReport

log = logging.getLogger("hullguard.agent.schedule")
_JOB_KEYS = {"cron", "targets", "all_containers", "clean"}


@dataclass(frozen=True)
class ScheduledScan:
    name: str
    cron: str
    targets: tuple[str, ...] = ()
    all_containers: bool = False
    clean: bool = False

    def next_after(self, when: datetime) -> datetime:
        nxt: datetime = croniter(self.cron, when).get_next(datetime)
        return nxt

    @property
    def texts(self) -> list[str]:
        return [*self.targets, *(["--all-containers"] if self.all_containers else [])]


def parse_jobs(cfg: ScheduleConfig) -> list[ScheduledScan]:
    """The jobs of ``[schedule]``; raises ``ConfigError`` naming the key that is wrong."""
    from hullguard.agent.config import ConfigError

    out: list[ScheduledScan] = []
    for name, raw in sorted(cfg.jobs.items()):
        key = f"schedule.jobs.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{key}: expected a table with cron and targets")
        unknown = sorted(set(raw) - _JOB_KEYS)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: unknown key")
        cron = raw.get("cron")
        if not isinstance(cron, str) or not croniter.is_valid(cron) or len(cron.split()) != 5:
            raise ConfigError(f"{key}.cron: expected a 5-field cron expression like \"0 3 * * *\", "
                              f"got {cron!r}")
        targets = raw.get("targets", [])
        if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"{key}.targets: expected a list of paths or container:NAME")
        flags: dict[str, bool] = {}
        for flag in ("all_containers", "clean"):
            value = raw.get(flag, False)
            if not isinstance(value, bool):
                raise ConfigError(f"{key}.{flag}: expected true or false, got {value!r}")
            flags[flag] = value
        if not targets and not flags["all_containers"]:
            raise ConfigError(f"{key}: nothing to scan; give targets or all_containers = true")
        out.append(ScheduledScan(name, cron, tuple(targets), **flags))
    return out


RunJob = Callable[[ScheduledScan], "ScanReport"]


def default_runner(config: Config) -> RunJob:
    """Run one job as the CLI would: targets resolved now, journal session, quarantine installed."""

    def run(job: ScheduledScan) -> ScanReport:
        from hullguard.agent import imagescan
        from hullguard.agent.ondemand import EngineFromConfig, ScanOptions, invoking_user, run_scan
        from hullguard.journal.store import JournalStore
        from hullguard.objects import containers
        from hullguard.objects.targets import resolve_targets
        from hullguard.response import quarantine

        containers.register_sources()
        options = ScanOptions.from_config(config.scan, config.response.on_demand(clean=job.clean),
                                          user=f"{invoking_user()} (schedule {job.name})")
        journal = JournalStore.open(config.journal_path)
        try:
            quarantine.install(quarantine.QuarantineStore.for_state_dir(
                config.state_path, max_size=config.response.quarantine_max_size, journal=journal,
                user=options.user))
            try:
                # image targets (image:, docker-archive:, oci:, ...) are scanned layer by layer in
                # their own session, as `hullguard scan` does; paths and containers by run_scan
                image_texts, path_texts = imagescan.split_targets(job.targets)
                report = None
                if path_texts or job.all_containers or not image_texts:
                    targets = resolve_targets(path_texts) if path_texts else []
                    if job.all_containers:
                        targets += containers.resolve_all_containers()
                    report = run_scan(targets, options, engine_factory=EngineFromConfig(config.engine),
                                      journal=journal, texts=[t for t in job.texts if t not in image_texts])
                if image_texts:
                    report = imagescan.merge_reports(report, imagescan.run_image_scan(
                        image_texts, config, journal=journal, user=options.user))
                assert report is not None
                return report
            except ValueError as exc:  # TargetError, ContainerError, ImageScanError: journaled, the agent goes on
                journal.add(DetectionRecord(
                    module=Module.AGENT.value, object=f"schedule:{job.name}", level=Level.ERROR.value,
                    action="Not scanned", kind=RecordKind.EVENT, user=options.user,
                    info=f"scheduled scan {job.name!r} could not start: {escape_text(str(exc))}"))
                raise
            finally:
                containers.release_pins()
        finally:
            journal.close()

    return run


class Scheduler:
    """Fires the configured jobs on time; ``start()``/``stop()`` from the agent.

    ``now`` and ``runner`` are injectable so tests can drive time and observe runs.
    """

    def __init__(self, config: Config, *, runner: RunJob | None = None,
                 now: Callable[[], datetime] | None = None, poll: float = 1.0) -> None:
        self.jobs = parse_jobs(config.schedule) if config.schedule.enabled else []
        self.runner = runner or default_runner(config)
        self.now = now or (lambda: datetime.now().astimezone())
        self.poll = poll
        self.runs: dict[str, int] = {job.name: 0 for job in self.jobs}
        self.last_error: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next: dict[str, datetime] = {}

    def next_runs(self) -> dict[str, datetime]:
        return dict(self._next)

    def start(self) -> None:
        if self._thread is not None or not self.jobs:
            return
        start = self.now()
        self._next = {job.name: job.next_after(start) for job in self.jobs}
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="hullguard-schedule", daemon=True)
        self._thread.start()
        for job in self.jobs:
            log.info("scheduled scan %s (%s): next at %s", job.name, job.cron, self._next[job.name])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop firing; a scan already running finishes in the background (it is a daemon thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self.now()
            for job in self.jobs:
                if self._stop.is_set():
                    return
                if self._next[job.name] <= now:
                    self._fire(job)
                    self._next[job.name] = job.next_after(self.now())  # missed firings are skipped
            self._stop.wait(self.poll)

    def _fire(self, job: ScheduledScan) -> None:
        log.info("scheduled scan %s starting", job.name)
        try:
            report = self.runner(job)
        except Exception as exc:  # one failed run must not stop the schedule
            self.last_error[job.name] = str(exc)
            log.error("scheduled scan %s failed: %s", job.name, escape_text(str(exc)))
            return
        finally:
            self.runs[job.name] += 1
        log.info("scheduled scan %s done: %d files, %d detections, exit code %s", job.name,
                 report.files, report.detections, report.session.exit_code)


def scheduler_for(config: Config, **kwargs: Any) -> Scheduler:
    return Scheduler(config, **kwargs)
