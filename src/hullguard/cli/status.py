"""`hullguard status`: is the agent running, which signatures are loaded, what the journal holds.

One screen that answers "am I protected?" without reading logs; `--format json` for monitoring.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hullguard.agent import stats as agent_stats
from hullguard.agent.config import Config
from hullguard.cli.context import UserError, state
from hullguard.engine.engine import Engine
from hullguard.engine.errors import SignatureError
from hullguard.journal.store import JournalError, JournalNotFound, JournalStore

HELP = """Show whether the agent is running and what it protects, its counters (events, matches,
events lost and where: kernel, queue, fanotify overflows, processes gone before they were read),
the loaded signatures, and a summary of the journal.

\b
Exit codes: 0 the agent is running, 3 it is not running, 100 error.
Examples:
  hullguard status
  hullguard status --format json
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def agent_status(config: Config) -> dict[str, Any]:
    ready = Path(config.run_dir) / "agent.ready"
    try:
        info: dict[str, Any] = json.loads(ready.read_text())
    except (OSError, ValueError):
        return {"running": False}
    pid = int(info.get("pid", 0))
    if not pid or not _pid_alive(pid):
        return {"running": False, "stale_ready_file": str(ready)}
    marks = info.get("marks", [])
    out = {"running": True, "pid": pid, "realtime": bool(info.get("realtime")),
           "host_filesystems": [m["path"] for m in marks if m.get("kind") == "host"],
           "containers": sum(1 for m in marks if m.get("kind") != "host"),
           "workers": info.get("workers", [])}
    stats = agent_stats.read(Path(config.run_dir))
    if stats is not None and stats.get("pid") == pid:  # not a file left by an earlier agent
        out["stats"] = stats
    return out


def _num(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def stats_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows for the agent's counters; losses are named by where they happened."""
    rows: list[tuple[str, str]] = []
    bh = stats.get("behavior")
    if isinstance(bh, dict):
        raw = bh.get("dropped")
        dropped: dict[str, Any] = raw if isinstance(raw, dict) else {}
        lost = ", ".join(f"{k} {_num(v)}" for k, v in sorted(dropped.items())) or "none"
        rows.append(("Behaviour", f"{_num(bh.get('events'))} events, {_num(bh.get('matches'))} matches; "
                                  f"dropped: {lost}; gone before read {_num(bh.get('gone_before_read'))}, "
                                  f"replaced before read {_num(bh.get('replaced_before_read'))}"))
    rt = stats.get("realtime")
    if isinstance(rt, dict):
        rows.append(("Real-time", f"{_num(rt.get('events'))} events, {_num(rt.get('cache_hits'))} cache hits, "
                                  f"{_num(rt.get('timeouts'))} timeouts, {_num(rt.get('overloads'))} overloads, "
                                  f"{_num(rt.get('queue_overflows'))} queue overflows"))
    jr = stats.get("journal")
    if isinstance(jr, dict) and _num(jr.get("dropped")):
        rows.append(("Journal writer", f"{_num(jr.get('dropped'))} records dropped"))
    if rows and isinstance(stats.get("written"), str):
        rows.append(("Counters", f"as of {stats['written']}"))
    return rows


def engine_status(config: Config) -> dict[str, Any]:
    try:
        engine = Engine.from_config(config.engine)
    except SignatureError as exc:
        return {"error": str(exc)}
    return {"version": engine.version, "db_version": engine.db_version,
            "signatures": engine.signature_count, "sources": [str(s) for s in engine.sources],
            "clamd": config.engine.clamd_socket or None}


def journal_status(config: Config) -> dict[str, Any]:
    try:
        with JournalStore.open(config.journal_path, readonly=True) as store:
            counts = store.counts()
    except JournalNotFound:
        return {"path": str(config.journal_path), "records": 0, "sessions": 0}
    except JournalError as exc:
        return {"path": str(config.journal_path), "error": str(exc)}
    last = counts.last_detection.isoformat() if counts.last_detection else None
    return {"path": str(config.journal_path), "records": counts.total, "sessions": counts.sessions,
            "detections_by_module": counts.detections_by_module, "last_detection": last}


def status_command(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    if fmt not in ("table", "json"):
        raise UserError(f"--format: expected table or json, got {fmt!r}")
    config = state(ctx).config
    report = {"agent": agent_status(config), "engine": engine_status(config), "journal": journal_status(config)}
    if fmt == "json":
        typer.echo(json.dumps(report, indent=2))
    else:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        agent = report["agent"]
        if agent["running"]:
            where = ", ".join(agent["host_filesystems"]) or "no host filesystems"
            table.add_row("Agent", f"running (pid {agent['pid']}), real-time "
                          f"{'on' if agent['realtime'] else 'off'}: {where}, {agent['containers']} containers")
            for name, text in stats_rows(agent.get("stats") or {}):
                table.add_row(name, text)
        else:
            table.add_row("Agent", "not running (start it with `hullguard agent`)")
        eng = report["engine"]
        table.add_row("Engine", eng.get("error") or
                      f"{eng['version']}, {eng['signatures']} signatures, database {eng['db_version']}"
                      + (f", clamd at {eng['clamd']}" if eng["clamd"] else ""))
        jr = report["journal"]
        detail = jr.get("error") or (
            f"{jr['records']} records, {jr['sessions']} scan sessions"
            + (f", last detection {jr['last_detection']}" if jr.get("last_detection") else ""))
        table.add_row("Journal", f"{jr['path']}: {detail}")
        Console(soft_wrap=True).print(table)
    raise typer.Exit(0 if report["agent"]["running"] else 3)


def register(app: typer.Typer) -> None:
    app.command("status", help=HELP)(status_command)
