"""Every command's --help renders (a help text once crashed the markup renderer) and teaches."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from hullguard.cli.main import app


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_group_is_there() -> None:
    top = {c[0] for c in COMMANDS if c}
    assert {"scan", "log", "agent", "status", "quarantine", "rules"} <= top


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "hullguard")
def test_help_renders(path: tuple[str, ...]) -> None:
    res = CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output


@pytest.mark.parametrize("name", ["scan", "log", "agent", "status"])
def test_main_commands_show_examples(name: str) -> None:
    res = CliRunner().invoke(app, [name, "--help"])
    assert "Examples" in res.output or "Example" in res.output, res.output
