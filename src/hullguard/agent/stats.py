"""The agent's counters, written to ``<run_dir>/agent.stats.json`` for ``hullguard status``.

Losses must be visible outside the agent (a Warning in the journal says *that* events were
lost; the counters say how many, and where): the file holds behaviour monitoring's counters
(events, matches, drops by source, processes gone before they could be read), real-time
protection's (events, cache hits, timeouts, fanotify queue overflows) and the journal writer's
dropped records. It is rewritten every :data:`INTERVAL` seconds by a rename, so a reader never
sees half a file; ``written`` (UTC, ISO 8601) lets a reader tell a stale file from a live one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATS_FILE = "agent.stats.json"
INTERVAL = 2.0
"""Seconds between two writes."""


def collect(*, behavior: Any = None, monitor: Any = None, writer: Any = None) -> dict[str, Any]:
    """The counters of whichever services run (None: not running)."""
    out: dict[str, Any] = {"written": datetime.now(UTC).isoformat(timespec="seconds"), "pid": os.getpid()}
    if behavior is not None:
        out["behavior"] = behavior.report()
    if monitor is not None:
        rt = dataclasses.asdict(monitor.stats)
        out["realtime"] = {"events": rt["events"], "cache_hits": rt["cache_hits"], "scans": rt["scans"],
                           "timeouts": rt["timeouts"], "overloads": rt["overloads"],
                           "queue_overflows": rt["overflows"], "detections": rt["detections"],
                           "denied": rt["denied"], "errors": rt["errors"]}
    if writer is not None:
        out["journal"] = {"dropped": int(writer.dropped)}
    return out


def write(run_dir: Path, data: dict[str, Any]) -> None:
    """Replace the stats file atomically (write a temporary file, then rename it)."""
    tmp = run_dir / (STATS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    tmp.replace(run_dir / STATS_FILE)


def read(run_dir: Path) -> dict[str, Any] | None:
    """The last stats the agent wrote; None when there are none (or the file is not JSON)."""
    try:
        data = json.loads((run_dir / STATS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
