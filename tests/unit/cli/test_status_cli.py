"""`hullguard status` reads the agent's ready file, the signatures and the journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HULLGUARD = Path(sys.executable).parent / "hullguard"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n')
    return subprocess.run([str(HULLGUARD), "--config", str(cfg), "--state-dir", str(tmp_path / "state"),
                           "status", *args], capture_output=True, text=True, timeout=60)


def test_agent_not_running_exits_3(tmp_path: Path) -> None:
    res = run(tmp_path, "--format", "json")
    assert res.returncode == 3, res.stderr
    report = json.loads(res.stdout)
    assert report["agent"] == {"running": False}
    assert report["engine"]["signatures"] > 0
    assert report["journal"]["records"] == 0


def test_running_agent_is_reported(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    ready = {"pid": os.getpid(), "realtime": True, "workers": [],
             "marks": [{"kind": "host", "path": "/srv", "container": ""},
                       {"kind": "container", "path": "/x/merged", "container": "a" * 64}]}
    (tmp_path / "run" / "agent.ready").write_text(json.dumps(ready))
    res = run(tmp_path, "--format", "json")
    assert res.returncode == 0, res.stderr
    agent = json.loads(res.stdout)["agent"]
    assert agent["running"] and agent["host_filesystems"] == ["/srv"] and agent["containers"] == 1
    table = run(tmp_path)
    assert "running (pid" in table.stdout and "/srv" in table.stdout


def test_stale_ready_file_means_not_running(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "agent.ready").write_text(json.dumps({"pid": 2**22 + 1}))
    res = run(tmp_path, "--format", "json")
    assert res.returncode == 3
    assert json.loads(res.stdout)["agent"]["running"] is False


def test_bad_format_is_a_one_line_error(tmp_path: Path) -> None:
    res = run(tmp_path, "--format", "xml")
    assert res.returncode == 100
    assert res.stderr.strip().count("\n") == 0 and "--format" in res.stderr


def test_agent_counters_from_the_stats_file(tmp_path: Path) -> None:
    """The agent's loss counters (agent.stats.json) in both formats; a file of another pid is ignored."""
    from hullguard.agent import stats as agent_stats

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "agent.ready").write_text(json.dumps({"pid": os.getpid(), "realtime": True, "marks": []}))
    data = {"written": "2025-01-02T03:04:05+00:00", "pid": os.getpid(),
            "behavior": {"events": 1234, "matches": 7, "gone_before_read": 41,
                         "dropped": {"kernel_lost": 3, "kernel_overruns": 0, "queue": 19, "file_overflows": 0}},
            "realtime": {"events": 555, "cache_hits": 500, "timeouts": 2, "overloads": 1, "queue_overflows": 4},
            "journal": {"dropped": 6}}
    agent_stats.write(run_dir, data)
    assert not (run_dir / "agent.stats.json.tmp").exists()
    res = run(tmp_path, "--format", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["agent"]["stats"] == data
    table = " ".join(run(tmp_path).stdout.split())  # rich wraps at 80 columns in a pipe
    assert "1234 events, 7 matches; dropped: file_overflows 0, kernel_lost 3, kernel_overruns 0, queue 19; " \
           "gone before read 41" in table, table
    assert "555 events, 500 cache hits, 2 timeouts, 1 overloads, 4 queue overflows" in table, table
    assert "6 records dropped" in table and "as of 2025-01-02T03:04:05+00:00" in table
    # left by an agent that is gone: not shown as this agent's counters
    agent_stats.write(run_dir, dict(data, pid=os.getpid() + 1))
    assert "stats" not in json.loads(run(tmp_path, "--format", "json").stdout)["agent"]
    (run_dir / "agent.stats.json").write_text("{not json")
    res = run(tmp_path, "--format", "json")
    assert res.returncode == 0 and "stats" not in json.loads(res.stdout)["agent"]
