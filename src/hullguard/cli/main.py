"""The ``hullguard`` command: global options, error handling, and the command groups.

Each command group lives in its own module with a ``register(app)`` function; this
module only wires them and turns errors into one line and exit code 100.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hullguard import __version__
from hullguard.agent.config import ConfigError
from hullguard.cli import agent as agent_cmd
from hullguard.cli import log as log_cmd
from hullguard.cli import quarantine as quarantine_cmd
from hullguard.cli import rules as rules_cmd
from hullguard.cli import scan as scan_cmd
from hullguard.cli import status as status_cmd
from hullguard.cli.context import AppState, UserError

EXIT_ERROR = 100

HELP = """Container-aware malware protection for Linux servers: scan paths, containers and
images, protect them in real time, and read the detection log.

\b
Examples:
  hullguard scan /srv /home            scan directories on all cores (exit codes: scan --help)
  hullguard scan --clean /srv          ... and delete infected files
  hullguard log --since 1d             what was found in the last day, and what was done
  hullguard log --format csv           the same as CSV (Time,Level,Module,Object,...)
  hullguard log --scans                scan sessions: start, end, counts, exit code
  hullguard agent                      real-time protection, in the foreground

Every command has its own --help. Errors are one line on stderr and exit code 100.
"""

app = typer.Typer(
    rich_markup_mode=None,  # help texts are plain: brackets such as [/VARIANT] are not markup
    name="hullguard",
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hullguard {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="HULLGUARD_CONFIG", metavar="FILE", help="Configuration file (TOML).",
        show_default="/etc/hullguard/config.toml")] = None,
    state_dir: Annotated[str | None, typer.Option(
        "--state-dir", envvar="HULLGUARD_STATE_DIR", metavar="DIR",
        help="State directory (journal, quarantine, caches).", show_default="/var/lib/hullguard")] = None,
    signatures: Annotated[list[str] | None, typer.Option(
        "--signatures", metavar="DIR", help="Extra signature directory (.hdb, .hsb, .yar); repeatable.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = AppState(config_path=config, state_dir=state_dir,
                       signatures=tuple(signatures or ()), debug=debug)


scan_cmd.register(app)
log_cmd.register(app)
quarantine_cmd.register(app)
agent_cmd.register(app)
rules_cmd.register(app)
status_cmd.register(app)


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit 100."""
    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False)  # Typer returns the exit code instead of raising
        if isinstance(code, int) and code:
            sys.exit(code)
    except (UserError, ConfigError) as exc:
        if debug:
            raise
        typer.echo(f"hullguard: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("hullguard: aborted", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        typer.echo("hullguard: interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors from Typer's bundled click
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"hullguard: error: {exc}", err=True)
        sys.exit(EXIT_ERROR if getattr(exc, "exit_code", 1) != 0 else 0)
    except Exception as exc:  # anything unexpected: one line unless --debug
        if debug:
            raise
        typer.echo(f"hullguard: error: {exc} (run with --debug for details)", err=True)
        sys.exit(EXIT_ERROR)
