"""``hullguard log``: read the detection journal (and ``--scans``: the scan sessions).

Thin on purpose: filters are parsed by ``journal.query``, records come from ``JournalStore``
(opened read-only, so reading never needs a writable state directory), and every format
except the table is a ``journal.export`` writer.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TextIO, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hullguard.cli.context import UserError, state
from hullguard.journal import export
from hullguard.journal.query import DEFAULT_KINDS, module_alias, parse_kinds, parse_since, resolve_module
from hullguard.journal.record import DetectionRecord, Level, RecordKind, ScanSession
from hullguard.journal.store import JournalError, JournalNotFound, JournalStore
from hullguard.response.actions import Action

RECORD_FORMATS = ("table", "json", "jsonl", "csv", "sarif")
SESSION_FORMATS = ("table", "json", "jsonl", "csv")

ACTION_ALIASES: dict[str, Action] = {
    "retained": Action.RETAINED,
    "cleaned": Action.CLEANED_BY_DELETING,
    "deleted": Action.CLEANED_BY_DELETING,
    "quarantined": Action.QUARANTINED,
    "blocked": Action.BLOCKED,
    "not-scanned": Action.NOT_SCANNED,
    "clean-failed": Action.CLEAN_FAILED,
}

_LEVEL_STYLE = {Level.ERROR.value: "bold red", Level.WARNING.value: "yellow", Level.INFO.value: "dim"}


def resolve_action(text: str) -> str:
    """An action's journal text from the text itself (any case) or a short alias."""
    key = text.strip().lower()
    for action in Action:
        if action.value.lower() == key:
            return action.value
    alias = ACTION_ALIASES.get(key.replace("_", "-").replace(" ", "-"))
    if alias is None:
        raise UserError(f"--action: unknown action {text!r}; use one of: {', '.join(ACTION_ALIASES)} "
                        "(or the full text, like \"Cleaned by deleting\")")
    return alias.value


_Parsed = TypeVar("_Parsed")
_Default = TypeVar("_Default")


def _option(option: str, text: str | None, parse: Callable[[str], _Parsed], default: _Default
            ) -> _Parsed | _Default:
    """``parse(text)``, or ``default`` when the option was not given.

    Every filter is parsed here, not by Typer, so a bad value of any of them is the same
    one-line error: the option's name and what ``parse`` said (its ValueError).
    """
    if text is None:
        return default
    try:
        return parse(text)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None


def _whole_number(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a whole number >= 1, got {text!r}")
    return value


def _check_format(fmt: str, allowed: Sequence[str], what: str) -> str:
    value = fmt.strip().lower()
    if value not in allowed:
        raise UserError(f"--format: {fmt!r} is not a format for {what}; use one of: {', '.join(allowed)}")
    return value


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        stream = path.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise UserError(f"--output: cannot write {path}: {exc.strerror or exc}") from None
    try:
        with stream:
            yield stream
    except OSError as exc:
        raise UserError(f"--output: cannot write {path}: {exc.strerror or exc}") from None


def _console(stream: TextIO, to_file: bool) -> Console:
    if to_file:
        return Console(file=stream, width=200, color_system=None, force_terminal=False)
    return Console(file=stream)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _container(record: DetectionRecord) -> str:
    return record.container_name or record.container_id[:12]


COMPACT_WIDTH = 110
"""Below this console width the record table drops Level (the detection is coloured by level
instead) and Container (the docker:// object URI names the container anyway)."""


def records_table(records: Sequence[DetectionRecord], *, caption: str = "", width: int = 200) -> Table:
    """Narrow-terminal friendly: the object folds (never loses characters), times break at the space."""
    compact = width < COMPACT_WIDTH
    with_level = not compact
    with_containers = not compact and any(r.container_id or r.container_name for r in records)
    table = Table(caption=caption or None, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("Time (UTC)", min_width=10, max_width=19)
    if with_level:
        table.add_column("Level")
    table.add_column("Module", max_width=12, overflow="ellipsis")
    table.add_column("Object", overflow="fold", ratio=3, min_width=16)
    table.add_column("Detection", overflow="fold", ratio=1, min_width=9)
    table.add_column("Action", max_width=12 if compact else 20)
    if with_containers:
        table.add_column("Container", max_width=20, overflow="ellipsis")
    for r in records:
        style = _LEVEL_STYLE.get(r.level, "")
        if RecordKind(r.kind) is RecordKind.DETECTION or r.detection:
            detection = Text(r.detection + (f" ({r.type})" if r.type else ""),
                             style="" if with_level else style)
        else:  # not scanned / events: the reason is the interesting part
            detection = Text(r.info or r.event, style="italic")
        # Text(), never markup strings: object names are attacker-controlled.
        cells = [Text(_time(r.time))]
        if with_level:
            cells.append(Text(r.level, style=style))
        cells += [Text(module_alias(r.module)), Text(r.object), detection, Text(r.action)]
        if with_containers:
            cells.append(Text(_container(r)))
        table.add_row(*cells)
    return table


def sessions_table(sessions: Sequence[ScanSession], *, caption: str = "", width: int = 200) -> Table:
    """Every session column at any width; below ``COMPACT_WIDTH`` an end on the start's day is
    shown as its time of day only, so the counters keep their place on an 80-column terminal."""
    compact = width < COMPACT_WIDTH
    table = Table(caption=caption or None, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("ID", justify="right")
    table.add_column("Start (UTC)", min_width=10, max_width=19)
    table.add_column("End", min_width=8, max_width=19)
    table.add_column("Targets", overflow="fold", ratio=1, min_width=6)
    for name in ("Scanned", "Detected", "Cleaned", "Not\nscanned", "Exit\ncode"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in sessions:
        end = _time(s.end) if s.end else "running"
        if compact and s.end and end[:10] == _time(s.start)[:10]:
            end = end[11:]
        table.add_row(Text(str(s.id)), Text(_time(s.start)), Text(end), Text(" ".join(s.targets)),
                      Text(str(s.scanned)), Text(str(s.detections)), Text(str(s.cleaned)),
                      Text(str(s.not_scanned)), Text("" if s.exit_code is None else str(s.exit_code)))
    return table


def _open(path: Path) -> JournalStore | None:
    try:
        return JournalStore.open(path, readonly=True)
    except JournalNotFound:
        return None
    except JournalError as exc:
        raise UserError(str(exc)) from None


def _caption(count: int, limit: int | None, noun: str) -> str:
    text = f"{count} {noun}{'' if count == 1 else 's'}"
    if limit is not None and count >= limit:
        text += f" (the newest {limit}; raise --limit to see more)"
    return text


def _write_records(records: list[DetectionRecord], fmt: str, stream: TextIO, *, to_file: bool,
                   limit: int | None) -> None:
    if fmt == "table":
        console = _console(stream, to_file)
        if records:
            console.print(records_table(records, caption=_caption(len(records), limit, "record"),
                                        width=console.width))
        else:
            console.print("No matching records.")
    elif fmt in ("json", "jsonl"):
        export.write_json(records, stream, lines=fmt == "jsonl")
    elif fmt == "csv":
        export.write_csv(records, stream)
    else:
        export.write_sarif(records, stream)


def _write_sessions(sessions: list[ScanSession], fmt: str, stream: TextIO, *, to_file: bool,
                    limit: int | None) -> None:
    if fmt == "table":
        console = _console(stream, to_file)
        if sessions:
            console.print(sessions_table(sessions, caption=_caption(len(sessions), limit, "scan"),
                                         width=console.width))
        else:
            console.print("No matching scans.")
    elif fmt in ("json", "jsonl"):
        export.write_sessions_json(sessions, stream, lines=fmt == "jsonl")
    else:
        export.write_sessions_csv(sessions, stream)


def log_command(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only records at or after this time: 10m, 2h, 7d, 1w, or an ISO date/time "
        "(2024-05-01, 2024-05-01T12:00; UTC unless an offset is given).")] = None,
    module: Annotated[str | None, typer.Option(
        "--module", help="Only this module: on-demand, realtime, behaviour, web, image, admission, "
        "quarantine, agent, or the full name (\"On-demand scan\").")] = None,
    action: Annotated[str | None, typer.Option(
        "--action", help="Only this action: cleaned, retained, quarantined, blocked, not-scanned, "
        "clean-failed, or the full text (\"Cleaned by deleting\").")] = None,
    container: Annotated[str | None, typer.Option(
        "--container", help="Only this container: an id prefix or a name.")] = None,
    kind: Annotated[str | None, typer.Option(
        "--kind", help="detection, not_scanned, event or all.",
        show_default="detection and not_scanned")] = None,
    limit_text: Annotated[str | None, typer.Option(
        "--limit", metavar="N", help="Show only the newest N.", show_default="all")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="table, json, jsonl, csv or sarif (sarif: records only).")] = "table",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file instead of standard output.")] = None,
    scans: Annotated[bool, typer.Option(
        "--scans", help="List scan sessions instead of records.")] = False,
) -> None:
    """Show the detection log: what was found, where, and what was done about it."""
    limit = _option("--limit", limit_text, _whole_number, None)
    since_at = _option("--since", since, parse_since, None)
    module_name = _option("--module", module, resolve_module, None)
    if scans:
        for flag, value in (("--action", action), ("--container", container), ("--kind", kind)):
            if value is not None:
                raise UserError(f"{flag} filters records; it cannot be used with --scans")
    out_fmt = _check_format(fmt, SESSION_FORMATS if scans else RECORD_FORMATS,
                            "--scans" if scans else "records")
    action_text = _action(action)
    kinds = _option("--kind", kind, parse_kinds, DEFAULT_KINDS)
    if container is not None and not container.strip("/ "):
        raise UserError("--container: expected a container id prefix or name")

    path = state(ctx).config.journal_path
    store = _open(path)
    records: list[DetectionRecord] = []
    sessions: list[ScanSession] = []
    if store is None:
        typer.echo(f"No records yet: there is no journal at {path}.", err=True)
        if out_fmt == "table" and output is None:
            return
    else:
        with store:
            try:
                if scans:
                    sessions = store.sessions(limit=limit, since=since_at, module=module_name)
                else:
                    records = store.query(since=since_at, module=module_name, action=action_text,
                                          container=container.strip() if container else None,
                                          kind=kinds, limit=limit)
            except JournalError as exc:
                raise UserError(str(exc)) from None
    with _output(output) as stream:
        if scans:
            _write_sessions(sessions, out_fmt, stream, to_file=output is not None, limit=limit)
        else:
            _write_records(records, out_fmt, stream, to_file=output is not None, limit=limit)


def _action(text: str | None) -> str | None:
    return None if text is None else resolve_action(text)


LOG_HELP = """Show the detection log: what was found, where, and what was done about it.

Records are shown oldest first; times are UTC. Without --kind, detections and objects that could
not be scanned are listed (quarantine and agent events need --kind event or all). --scans lists
the scan sessions instead: start, end, targets, scanned, detections, cleaned, not scanned.

\b
Examples:
  hullguard log --since 1h
  hullguard log --module realtime --container web
  hullguard log --action cleaned --format csv > cleaned.csv
  hullguard log --format sarif -o detections.sarif
  hullguard log --scans --limit 10
"""


def register(app: typer.Typer) -> None:
    app.command("log", help=LOG_HELP)(log_command)
