"""`hullguard scan TARGET...`: parse the options, run the on-demand scan, print the results.

Results go to stdout in the chosen format; progress (a live line on a terminal, one plain
line per finding otherwise) and the summary go to stderr, so ``--format json > out.json``
stays machine-readable while a person still sees what happens.
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from typing import Annotated, TextIO

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from hullguard.agent.ondemand import (
    EngineFromConfig,
    Finding,
    ScanError,
    ScanOptions,
    ScanProgress,
    ScanReport,
    invoking_user,
    run_scan,
)
from hullguard.cli import scan_images
from hullguard.cli.context import UserError, state
from hullguard.journal import export
from hullguard.journal.codec import record_to_dict, session_to_dict
from hullguard.journal.record import RecordKind
from hullguard.journal.store import JournalError, JournalStore
from hullguard.objects import containers
from hullguard.objects.targets import TargetError, resolve_targets
from hullguard.response import quarantine

HELP = """Scan files and directories for malware, on all cores.

Directories are scanned recursively. Symbolic links are never followed (a link named on the
command line is resolved once); FIFOs, sockets and devices are skipped. Every detection and
every object that could not be scanned is recorded in the journal (`hullguard log`).

\b
Exit codes (the first that applies):
  50   threats found and not all of them cleaned
  10   some objects could not be scanned (unreadable, vanished, changed, archive limits, ...)
   1   threats found and all of them cleaned
   0   nothing found
 100   error (bad target, bad configuration)
Skipped objects (special files, symlinks, --exclude, --max-size, other file systems with
--one-file-system) were left out on purpose and do not count as "not scanned".

\b
Examples:
  hullguard scan /srv /home
  hullguard scan container:web              # its root file system and every mount
  hullguard scan --all-containers --clean   # every container, running and stopped
  hullguard scan --clean --exclude '*.iso' --max-size 500M /srv
  hullguard scan --format json --quiet /var/www > scan.json
  hullguard scan container:web --all-containers
  hullguard scan image:registry.local/app:1.2 --format sarif > app.sarif
  hullguard scan containerd:docker.io/library/nginx:latest --namespace k8s.io
"""

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    SARIF = "sarif"


def parse_size(text: str) -> int:
    """``10M``, ``1G``, ``512k``, ``1.5GiB`` or plain bytes (units are powers of 1024)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UserError(f"--max-size: {text!r} is not a size; write bytes or a number with K, M, G "
                        "or T (e.g. 10M, 1G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def summary_line(report: ScanReport) -> str:
    secs = max(report.elapsed, 1e-6)
    parts = [f"{report.detections} detection{'s' if report.detections != 1 else ''}",
             f"{report.cleaned} cleaned", f"{report.not_scanned} not scanned"]
    skipped = sum(report.skipped.values())
    if skipped:
        ranked = sorted(report.skipped.items(), key=lambda item: -item[1])
        detail = ", ".join(f"{n} {why.value}" for why, n in ranked)
        parts.append(f"{skipped} skipped ({detail})")
    return (f"Scanned {report.files:,} files ({human_bytes(report.scanned_bytes)}) in {report.elapsed:.1f} s "
            f"({human_bytes(report.scanned_bytes / secs)}/s, {report.files / secs:,.0f} files/s, "
            f"{report.workers} worker{'s' if report.workers != 1 else ''}): " + ", ".join(parts)
            + f". Exit code {report.session.exit_code}.")


def finding_text(f: Finding) -> str:
    r = f.record
    if r.kind is RecordKind.DETECTION:
        return f"{r.object}: {r.detection} ({r.type}): {r.action}"
    return f"{r.object}: not scanned: {r.info}"


# --- progress ----------------------------------------------------------------------------------
class PlainObserver:
    """Not a terminal: one line per finding on stderr, nothing per file."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def progress(self, progress: ScanProgress) -> None:
        del progress

    def finding(self, finding: Finding) -> None:
        self.stream.write(finding_text(finding) + "\n")
        self.stream.flush()


class LiveObserver:
    """A terminal: a live status line (files, bytes, rate, detections, current path) on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.latest = ScanProgress(0, 0, 0, 0, 0.0, "")
        self.spinner = Spinner("dots")
        self.live = Live(console=console, get_renderable=self._render, refresh_per_second=8,
                         transient=True, redirect_stdout=False, redirect_stderr=False)

    def _render(self) -> Group:
        p = self.latest
        rate = p.scanned_bytes / p.elapsed if p.elapsed > 0 else 0.0
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        stats = Text(f"{p.files:,} files  {human_bytes(p.scanned_bytes)}  {human_bytes(rate)}/s  ")
        stats.append(f"{p.detections} detections", style="bold red" if p.detections else "")
        if p.not_scanned:
            stats.append(f"  {p.not_scanned} not scanned", style="yellow")
        grid.add_row(self.spinner, stats, Text(p.current, style="dim", overflow="ellipsis", no_wrap=True))
        return Group(grid)

    def progress(self, progress: ScanProgress) -> None:
        self.latest = progress

    def finding(self, finding: Finding) -> None:
        style = "bold red" if finding.record.kind is RecordKind.DETECTION else "yellow"
        self.console.print(Text(finding_text(finding), style=style), soft_wrap=True)


# --- output ------------------------------------------------------------------------------------
def print_table(report: ScanReport, stream: TextIO) -> None:
    console = Console(file=stream, width=None if stream.isatty() else 200, highlight=False)
    if report.findings:
        table = Table(show_lines=False, expand=False)
        table.add_column("Object", overflow="fold")
        table.add_column("Detection / reason", overflow="fold")
        table.add_column("Action")
        for f in report.findings:
            r = f.record
            if r.kind is RecordKind.DETECTION:
                table.add_row(Text(r.object), Text(f"{r.detection} ({r.type})", style="red"),
                              Text(r.action))
            else:
                table.add_row(Text(r.object), Text(r.info, style="yellow"), Text(r.action))
        console.print(table)
    console.print(Text(summary_line(report)))


def write_json(report: ScanReport, stream: TextIO) -> None:
    """``{"session": {...}, "records": [...]}``: the journal's session (plus walk statistics) and records."""
    session = session_to_dict(report.session)
    session.update({
        "skipped": {why.value: n for why, n in sorted(report.skipped.items())},
        "elapsed_seconds": round(report.elapsed, 3),
        "workers": report.workers,
    })
    json.dump({"session": session, "records": [record_to_dict(r) for r in report.records]},
              stream, ensure_ascii=False, indent=2)
    stream.write("\n")


def write_output(report: ScanReport, fmt: OutputFormat, stream: TextIO) -> None:
    if fmt is OutputFormat.TABLE:
        print_table(report, stream)
    elif fmt is OutputFormat.JSON:
        write_json(report, stream)
    elif fmt is OutputFormat.CSV:
        export.write_csv(report.records, stream)
    else:
        export.write_sarif(report.records, stream)
    stream.flush()


# --- command -----------------------------------------------------------------------------------
def scan(
    ctx: typer.Context,
    targets: Annotated[list[str] | None, typer.Argument(
        metavar="TARGET", help="Files or directories, container:NAME|ID, image:NAME, docker-archive:FILE, "
        "oci:DIR, containerd:NAME or podman:NAME.",
        show_default=False)] = None,
    clean: Annotated[bool, typer.Option(
        "--clean", help="Delete infected host files (a file inside an archive: the archive).")] = False,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", metavar="GLOB",
        help="Skip paths matching GLOB (full path or base name; '*' also matches '/'); repeatable.")] = None,
    one_file_system: Annotated[bool, typer.Option(
        "--one-file-system", "-x", help="Do not descend into other file systems (mount points).")] = False,
    max_size: Annotated[str | None, typer.Option(
        "--max-size", metavar="SIZE", help="Skip files larger than SIZE (bytes, or 10M, 1G).")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", "-j", min=0, help="Scan processes (0: one per core).", show_default="config, 0")] = None,
    fmt: Annotated[OutputFormat, typer.Option(
        "--format", "-f", help="Output format on stdout.", case_sensitive=False)] = OutputFormat.TABLE,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress and no summary on stderr.")] = False,
    all_containers: Annotated[bool, typer.Option(
        "--all-containers", help="Also scan every Docker container, running and stopped.")] = False,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", help=scan_images.NAMESPACE_HELP, show_default="config, default")] = None,
    platform: Annotated[str | None, typer.Option(
        "--platform", metavar="OS/ARCH", help=scan_images.PLATFORM_HELP, show_default=False)] = None,
    fail_on: Annotated[list[str] | None, typer.Option(
        "--fail-on", metavar="TYPE", help=scan_images.FAIL_ON_HELP, show_default=False)] = None,
) -> None:
    app_state = state(ctx)
    cfg = app_state.config
    size_limit = parse_size(max_size) if max_size is not None else cfg.scan.max_size
    image_targets, targets = scan_images.split_targets(list(targets or ()))
    try:
        resolved = resolve_targets(targets) if targets or not (all_containers or image_targets) else []
        if all_containers:
            resolved += containers.resolve_all_containers()
            targets.append("--all-containers")
    except TargetError as exc:
        raise UserError(str(exc)) from None
    options = ScanOptions.from_config(
        cfg.scan, cfg.response.on_demand(clean=clean),
        exclude=cfg.scan.exclude + tuple(exclude or ()),
        one_file_system=one_file_system or cfg.scan.one_file_system,
        max_size=size_limit, workers=cfg.scan.workers if workers is None else workers)
    try:
        journal = JournalStore.open(cfg.journal_path)
    except JournalError as exc:
        raise UserError(str(exc)) from None
    quarantine.install(quarantine.QuarantineStore.for_state_dir(
        cfg.state_path, max_size=cfg.response.quarantine_max_size, journal=journal,
        user=options.user or invoking_user()))
    err = Console(stderr=True, highlight=False)
    live = not quiet and err.is_terminal
    observer: LiveObserver | PlainObserver | None = None
    if live:
        observer = LiveObserver(err)
    elif not quiet:
        observer = PlainObserver(sys.stderr)
    try:
        path_report = None
        if resolved or not image_targets:
            if isinstance(observer, LiveObserver):
                with observer.live:
                    path_report = run_scan(resolved, options, engine_factory=EngineFromConfig(cfg.engine),
                                           journal=journal, observer=observer, texts=targets)
            else:
                path_report = run_scan(resolved, options, engine_factory=EngineFromConfig(cfg.engine),
                                       journal=journal, observer=observer, texts=targets)
        image_report = scan_images.run_image_scan(
            image_targets, cfg, namespace=namespace, platform=platform, journal=journal,
            observer=observer) if image_targets else None
        report = scan_images.merge_reports(path_report, image_report)
    except KeyboardInterrupt:  # the session is already closed with exit code 130
        sys.stderr.write("hullguard: scan interrupted\n")
        sys.exit(130)
    except ScanError as exc:
        raise UserError(str(exc)) from None
    except JournalError as exc:
        raise UserError(f"journal: {exc}") from None
    finally:
        containers.release_pins()
        journal.close()
    write_output(report, fmt, sys.stdout)
    if not quiet and fmt is not OutputFormat.TABLE:  # the table carries the summary itself
        sys.stderr.write(summary_line(report) + "\n")
    # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, where an Exit's
    # code is returned from app() and dropped; SystemExit carries the code out unchanged.
    sys.exit(scan_images.exit_code(report, scan_images.parse_fail_on(fail_on)))


def register(app: typer.Typer) -> None:
    containers.register_sources()
    app.command("scan", help=HELP, no_args_is_help=True)(scan)

