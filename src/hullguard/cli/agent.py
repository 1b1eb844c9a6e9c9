"""`hullguard agent`: run the protection daemon in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import faulthandler
import logging
import sys
from dataclasses import replace
from typing import Annotated

import typer

from hullguard.agent.config import ConfigError
from hullguard.cli.context import UserError, state

HELP = """Run the agent in the foreground: real-time protection of the host and of every Docker
container, until SIGTERM or Ctrl-C. Needs root. Without a configuration file it runs with the
embedded defaults.

Real-time protection scans files when they are executed, opened (unless --no-open-perm) and
after they were written, inside every Docker container (also those started later, and image
build steps) and on the host filesystems named in `realtime.host_paths` (or --host-path; none
by default). Every access is answered within the deadline (default 2 s; on timeout it is
allowed and journaled as `not scanned: timeout`, unless `realtime.fail_closed`). What happens
to a detected file is `[response]` policy: in containers the access is denied and the file
retained, on the host it is deleted. Exclusions: `realtime.exclude_paths`, `exclude_processes`,
`exclude_users`, `exclude_containers`, `exclude_images`.

Detections go to the journal (`hullguard log`) in the state directory. SIGHUP reloads the
signatures. When ready, the agent writes <run_dir>/agent.ready and prints a line.

\b
Examples:
  hullguard agent                                # embedded defaults: every container
  hullguard agent --host-path / --deadline 1     # also the host's root filesystem
  hullguard --config /etc/hullguard/config.toml agent
  hullguard agent --no-realtime                  # other services only
"""


def agent_command(
    ctx: typer.Context,
    realtime: Annotated[bool, typer.Option(
        "--realtime/--no-realtime", help="Real-time file system protection (fanotify).")] = True,
    open_perm: Annotated[bool | None, typer.Option(
        "--open-perm/--no-open-perm", help="Also scan files when they are opened, not only executed "
        "and written (default: realtime.open_perm).", show_default=False)] = None,
    host_path: Annotated[list[str] | None, typer.Option(
        "--host-path", metavar="PATH", help="Protect the host filesystem holding PATH (repeatable; adds to "
        "realtime.host_paths).")] = None,
    containers: Annotated[bool | None, typer.Option(
        "--containers/--no-containers", help="Protect Docker containers (default: realtime.containers).",
        show_default=False)] = None,
    deadline: Annotated[float | None, typer.Option(
        "--deadline", min=0.05, metavar="SECONDS", help="Seconds within which every access is answered "
        "(default: realtime.deadline).", show_default=False)] = None,
) -> None:
    from hullguard.agent.daemon import Agent, AgentError, require_root  # heavy: only for this command
    from hullguard.journal.store import JournalError

    app_state = state(ctx)
    try:
        require_root()
    except AgentError as exc:
        raise UserError(str(exc)) from exc
    try:
        cfg = app_state.config
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    rt = cfg.realtime
    rt = replace(rt, enabled=rt.enabled and realtime,
                 open_perm=rt.open_perm if open_perm is None else open_perm,
                 containers=rt.containers if containers is None else containers,
                 deadline=rt.deadline if deadline is None else deadline,
                 host_paths=rt.host_paths + tuple(host_path or ()))
    cfg = replace(cfg, realtime=rt)
    # a crash in native code (yara-x, ctypes) leaves every thread's Python stack on stderr
    faulthandler.enable()
    logging.basicConfig(level=logging.DEBUG if app_state.debug else logging.INFO, stream=sys.stderr,
                        format="hullguard agent: %(levelname)s %(message)s")

    def out(line: str) -> None:
        typer.echo(line)
        sys.stdout.flush()

    try:
        code = Agent(cfg, out=out).run()
    except (AgentError, JournalError) as exc:
        raise UserError(str(exc)) from exc
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("agent", help=HELP)(agent_command)
