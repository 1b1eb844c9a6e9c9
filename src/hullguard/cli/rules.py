"""``hullguard rules check|list|test``: validate behaviour rule files and replay events against them.

Thin: loading, compiling and evaluating are ``behavior.ruleset``; recorded events are the JSON
lines the agent writes with ``behavior.record_events`` (or hand-written ones, see docs/rules.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hullguard.behavior.event import EventFormatError, event_from_record
from hullguard.behavior.ruleset import RuleError, RuleSet, load_rules
from hullguard.cli.context import UserError, state

rules_app = typer.Typer(help="Behaviour monitoring rules: check files, list rules, replay recorded events.",
                        no_args_is_help=True)

NoDefault = Annotated[bool, typer.Option("--no-default", help="Do not load the shipped default rules first.")]


def _load(files: list[Path], no_default: bool) -> RuleSet:
    try:
        return load_rules(files, include_default=not no_default)
    except RuleError as exc:
        raise UserError(str(exc)) from None


def _configured(ctx: typer.Context, files: list[Path] | None, no_default: bool) -> RuleSet:
    """Rules given on the command line; else the configured ``[behavior]`` rule files."""
    if files:
        return _load(files, no_default)
    cfg = state(ctx).config.behavior
    default = cfg.default_rules and not no_default
    return _load([Path(p) for p in cfg.rules_files], not default)


@rules_app.command("check")
def check(
    files: Annotated[list[Path], typer.Argument(help="Rule files (YAML), checked in order.")],
    no_default: NoDefault = False,
) -> None:
    """Validate rule files: YAML, keys, conditions, fields and values, with FILE:LINE:COL errors."""
    rs = _load(files, no_default)
    own = [r for r in rs.rules if any(r.source.startswith(f"{f}:") for f in map(str, files))]
    typer.echo(f"OK: {len(own)} rule(s) from {len(files)} file(s); {len(rs.rules)} rule(s), "
               f"{len(rs.macros)} macro(s), {len(rs.lists)} list(s) in total")


@rules_app.command("list")
def list_rules(
    ctx: typer.Context,
    rules: Annotated[list[Path] | None, typer.Option("--rules", help="Rule file (repeatable).")] = None,
    no_default: NoDefault = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per rule.")] = False,
) -> None:
    """The rules in effect: name, priority, responses, tags, whether enabled."""
    rs = _configured(ctx, rules, no_default)
    for r in rs.rules:
        if as_json:
            typer.echo(json.dumps({"name": r.name, "priority": r.priority.name, "responses": list(r.responses),
                                   "tags": list(r.tags), "enabled": r.enabled, "source": r.source,
                                   "condition": r.condition.strip()}))
        else:
            state_text = "" if r.enabled else "  (disabled)"
            typer.echo(f"{r.priority.name:<13} {','.join(r.responses):<14} {r.name}{state_text}")


@rules_app.command("test")
def test(
    ctx: typer.Context,
    events: Annotated[Path, typer.Option("--events", help="Recorded events, one JSON object per line.")],
    rules: Annotated[list[Path] | None, typer.Option("--rules", help="Rule file (repeatable).")] = None,
    no_default: NoDefault = False,
) -> None:
    """Replay recorded events against the rules and print every match (exit 0; 100 on bad input)."""
    rs = _configured(ctx, rules, no_default)
    try:
        lines = events.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as exc:
        raise UserError(f"{events}: cannot read: {exc.strerror or exc}") from None
    total = matched = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            event = event_from_record(json.loads(line))
        except (json.JSONDecodeError, EventFormatError) as exc:
            what = "invalid JSON: " if isinstance(exc, json.JSONDecodeError) else ""
            raise UserError(f"{events}:{lineno}: {what}{exc}") from None
        total += 1
        for m in rs.evaluate(event):
            matched += 1
            typer.echo(f"{events}:{lineno}: {m.rule.name} [{m.rule.priority.name}] "
                       f"({','.join(m.rule.responses)}): {m.output}")
    typer.echo(f"{total} event(s), {matched} match(es)")


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")
