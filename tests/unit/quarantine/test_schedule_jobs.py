"""Scheduled scans: configuration checks, firing on time, and a real run that becomes a journal session."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from hullguard.agent.config import ConfigError, parse_config
from hullguard.agent.ondemand import ScanReport
from hullguard.agent.schedule import ScheduledScan, Scheduler, default_runner, parse_jobs
from hullguard.journal.record import ScanSession
from hullguard.journal.store import JournalStore


def test_jobs_are_validated_with_the_key_named() -> None:
    cfg = parse_config({"schedule": {"jobs": {"nightly": {"cron": "0 3 * * *", "targets": ["/srv"]}}}})
    [job] = parse_jobs(cfg.schedule)
    assert job == ScheduledScan("nightly", "0 3 * * *", ("/srv",))
    bad = [
        ({"n": {"cron": "61 * * * *", "targets": ["/"]}}, r"schedule\.jobs\.n\.cron"),
        ({"n": {"cron": "* * * * * *", "targets": ["/"]}}, r"schedule\.jobs\.n\.cron"),
        ({"n": {"cron": "* * * * *"}}, r"schedule\.jobs\.n: nothing to scan"),
        ({"n": {"cron": "* * * * *", "targets": "/srv"}}, r"schedule\.jobs\.n\.targets"),
        ({"n": {"cron": "* * * * *", "targets": ["/"], "clean": "yes"}}, r"schedule\.jobs\.n\.clean"),
        ({"n": {"cron": "* * * * *", "targets": ["/"], "bogus": 1}}, r"schedule\.jobs\.n\.bogus"),
        ({"n": "0 3 * * *"}, r"schedule\.jobs\.n: expected a table"),
    ]
    for jobs, match in bad:
        with pytest.raises(ConfigError, match=match):
            parse_config({"schedule": {"jobs": jobs}})


def test_fires_on_time_and_skips_missed_runs() -> None:
    clock = {"now": datetime(2026, 1, 1, 2, 59, 58).astimezone()}
    ran: list[tuple[str, datetime]] = []
    done = threading.Event()

    def runner(job: ScheduledScan) -> ScanReport:
        ran.append((job.name, clock["now"]))
        clock["now"] += timedelta(hours=25)  # a very slow scan: the next day's firing is missed
        done.set()
        return ScanReport(ScanSession(targets=list(job.targets)))

    cfg = parse_config({"schedule": {"jobs": {"nightly": {"cron": "0 3 * * *", "targets": ["/srv"]}}}})
    sched = Scheduler(cfg, runner=runner, now=lambda: clock["now"], poll=0.01)
    sched.start()
    try:
        time.sleep(0.05)
        assert ran == []
        clock["now"] += timedelta(seconds=3)
        assert done.wait(5)
        time.sleep(0.05)
    finally:
        sched.stop()
    assert [name for name, _ in ran] == ["nightly"]
    assert sched.next_runs()["nightly"] == datetime(2026, 1, 3, 3, 0).astimezone()
    assert sched.runs == {"nightly": 1}


def test_a_failing_run_does_not_stop_the_schedule() -> None:
    calls: list[int] = []

    def runner(job: ScheduledScan) -> ScanReport:
        calls.append(1)
        raise RuntimeError("engine exploded")

    cfg = parse_config({"schedule": {"jobs": {"often": {"cron": "* * * * *", "targets": ["/srv"]}}}})
    now = {"t": datetime(2026, 1, 1, 0, 0, 30).astimezone()}
    sched = Scheduler(cfg, runner=runner, now=lambda: now["t"], poll=0.01)
    sched.start()
    try:
        for _ in range(3):
            now["t"] += timedelta(minutes=1)
            deadline = time.monotonic() + 5
            want = len(calls) + 1
            while len(calls) < want and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        sched.stop()
    assert len(calls) == 3 and "engine exploded" in sched.last_error["often"]


def test_default_runner_is_a_journal_session(tmp_path: Path, eicar: bytes) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "eicar.com").write_bytes(eicar)
    (tree / "ok.txt").write_text("fine")
    cfg = parse_config({"state_dir": str(tmp_path / "state"), "scan": {"workers": 1},
                        "schedule": {"jobs": {"t": {"cron": "* * * * *", "targets": [str(tree)]}}}})
    [job] = parse_jobs(cfg.schedule)
    report = default_runner(cfg)(job)
    assert report.detections == 1 and (tree / "eicar.com").exists()  # clean = false: only report
    with JournalStore.open(cfg.journal_path) as journal:
        [session] = journal.sessions()
        assert session.targets == [str(tree)] and session.detections == 1 and session.exit_code == 50
        assert "(schedule t)" in session.user
    bad = parse_config({"state_dir": str(tmp_path / "state"),
                        "schedule": {"jobs": {"b": {"cron": "* * * * *", "targets": [str(tmp_path / "missing")]}}}})
    [bad_job] = parse_jobs(bad.schedule)
    with pytest.raises(ValueError):
        default_runner(bad)(bad_job)
    with JournalStore.open(cfg.journal_path) as journal:
        assert any("could not start" in r.info for r in journal.query(module="Agent"))
