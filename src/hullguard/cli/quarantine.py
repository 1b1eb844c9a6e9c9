"""`hullguard quarantine list|show|restore|delete|export`: the quarantine store, from the shell.

``export`` writes a .zip holding the original bytes under the original file name (stored, no
password): a sample to hand to an analyst that cannot be run or opened by accident.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hullguard.cli.context import UserError, state
from hullguard.journal.store import JournalError, JournalStore
from hullguard.objects.uri import escape_text
from hullguard.response.quarantine import (
    BrokenEntry,
    QuarantineEntry,
    QuarantineError,
    QuarantineStore,
    host_locator,
)

_T = TypeVar("_T")
HELP = """List, inspect, restore, delete and export quarantined files.

A scan with --clean (or the agent) quarantines a detected file when the [response] policy says
"quarantine" for its scope: the file is stored encrypted in STATE_DIR/quarantine with its
original URI, path, owner, mode, times, SHA-1, detection, container and image, and removed
from where it was only once that copy is on disk. IDs are shown by `list`.

\b
Examples:
  hullguard quarantine list
  hullguard quarantine show 20260102030405-1a2b3c4d --format json
  hullguard quarantine restore 20260102030405-1a2b3c4d            # where it was (into the container)
  hullguard quarantine restore 20260102030405-1a2b3c4d --to /tmp/  # somewhere else
  hullguard quarantine export 20260102030405-1a2b3c4d -o sample.zip
  hullguard quarantine delete 20260102030405-1a2b3c4d
"""
app = typer.Typer(help=HELP, no_args_is_help=True)


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", case_sensitive=False, help="Output format.")]


def _store(ctx: typer.Context, *, journal: bool = False) -> tuple[QuarantineStore, JournalStore | None]:
    cfg = state(ctx).config
    j: JournalStore | None = None
    if journal:
        try:
            j = JournalStore.open(cfg.journal_path)
        except JournalError as exc:
            raise UserError(str(exc)) from None
    return QuarantineStore.for_state_dir(cfg.state_path, max_size=cfg.response.quarantine_max_size,
                                         journal=j, user=_user()), j


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _entry_dict(entry: QuarantineEntry) -> dict[str, object]:
    data: dict[str, object] = {k: (escape_text(v) if isinstance(v, str) else v) for k, v in asdict(entry).items()}
    data["mode"] = f"{entry.mode:04o}"
    return data


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@app.command("list")
def list_cmd(ctx: typer.Context, fmt: FormatOpt = Format.TABLE) -> None:
    """Every entry, oldest first; damaged entries are listed with what is wrong.

    \b
    Examples:
      hullguard quarantine list
      hullguard quarantine list --format json | jq -r '.[].id'
    """
    store, _ = _store(ctx)
    entries = _run(store.list)
    if fmt is Format.JSON:
        out = [_entry_dict(e) if isinstance(e, QuarantineEntry)
               else {"id": e.id, "problem": escape_text(e.problem)} for e in entries]
        json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    if not entries:
        console.print("The quarantine is empty.")
        return
    table = Table()
    for col in ("ID", "Quarantined", "Object", "Detection", "Size", "Container"):
        table.add_column(col, overflow="fold")
    for e in entries:
        if isinstance(e, BrokenEntry):
            table.add_row(e.id, "", Text(escape_text(e.problem), style="red"), "", "", "")
            continue
        table.add_row(e.id, e.created, Text(e.display_uri), Text(escape_text(e.detection)), _human(e.size),
                      Text(escape_text(e.container_name or e.container_id[:12])))
    console.print(table)


@app.command("show")
def show_cmd(ctx: typer.Context, entry_id: Annotated[str, typer.Argument(metavar="ID")],
             fmt: FormatOpt = Format.TABLE) -> None:
    """All metadata of one entry.

    \b
    Example:
      hullguard quarantine show 20260102030405-1a2b3c4d --format json
    """
    store, _ = _store(ctx)
    entry = _run(lambda: store.get(entry_id))
    data = _entry_dict(entry)
    if fmt is Format.JSON:
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        typer.echo(f"{key.ljust(width)}  {value}")


@app.command("restore")
def restore_cmd(ctx: typer.Context, entry_id: Annotated[str, typer.Argument(metavar="ID")],
                to: Annotated[Path | None, typer.Option(
                    "--to", metavar="PATH", help="Restore here (a directory or a new file name) "
                    "instead of the original place.")] = None,
                keep: Annotated[bool, typer.Option("--keep", help="Keep the entry after restoring.")] = False,
                ) -> None:
    """Put the original file back, byte for byte, with its owner, mode and times.

    A container's file goes back into the container (its volume or writable layer) when the
    container still exists. An existing file is never replaced.

    \b
    Examples:
      hullguard quarantine restore 20260102030405-1a2b3c4d
      hullguard quarantine restore 20260102030405-1a2b3c4d --to /srv/restored/ --keep
    """
    store, journal = _store(ctx, journal=True)
    try:
        target = _run(lambda: store.restore(entry_id, to, locator=_locator(), keep=keep))
    finally:
        if journal is not None:
            journal.close()
        _release_pins()
    typer.echo(f"Restored {entry_id} to {escape_text(os.fsdecode(target))}")


def _release_pins() -> None:
    """Close the directories a container restore pinned (only loaded when one was used)."""
    containers = sys.modules.get("hullguard.objects.containers")
    if containers is not None:
        containers.release_pins()


def _locator() -> _ContainerLocator:
    return _ContainerLocator()


class _ContainerLocator:
    """Container files: where the container has that path today; others: the original root."""

    def __call__(self, entry: QuarantineEntry) -> tuple[bytes, bytes] | None:
        if not entry.container_id or not entry.container_path:
            return host_locator(entry)
        from hullguard.objects import containers

        try:
            client = containers.client()
        except containers.ContainerError:
            return None
        try:
            return containers.restore_location(client, entry.container_id, entry.container_path)
        except containers.ContainerError as exc:
            raise QuarantineError(f"cannot restore {entry.id}: {exc}") from None
        finally:
            client.close()


@app.command("delete")
def delete_cmd(ctx: typer.Context, entry_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Remove an entry for good (damaged entries too).

    \b
    Example:
      hullguard quarantine delete 20260102030405-1a2b3c4d
    """
    store, journal = _store(ctx, journal=True)
    try:
        _run(lambda: store.delete(entry_id))
    finally:
        if journal is not None:
            journal.close()
    typer.echo(f"Deleted {entry_id}")


@app.command("export")
def export_cmd(ctx: typer.Context, entry_id: Annotated[str, typer.Argument(metavar="ID")],
               output: Annotated[Path | None, typer.Option(
                   "--output", "-o", metavar="FILE", help="The .zip to write (default: ./ID.zip).")] = None,
               ) -> None:
    """Write the original bytes into a .zip (stored, no password) under the original name.

    \b
    Example:
      hullguard quarantine export 20260102030405-1a2b3c4d --output sample.zip
    """
    store, _ = _store(ctx)
    path = output or Path(f"{entry_id}.zip")
    _run(lambda: store.export_zip(entry_id, path))
    typer.echo(f"Exported {entry_id} to {escape_text(str(path))} (contains the original, "
               "possibly malicious, file)")


def _run(work: Callable[[], _T]) -> _T:
    try:
        return work()
    except QuarantineError as exc:
        raise UserError(str(exc)) from None


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="quarantine")
