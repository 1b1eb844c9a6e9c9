"""`hullguard quarantine ... --help` and `scan --help` teach the container and quarantine commands by example."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hullguard.cli.main import app


@pytest.mark.parametrize("sub", ["", "list", "show", "restore", "delete", "export"])
def test_quarantine_help_has_examples(sub: str) -> None:
    res = CliRunner().invoke(app, ["quarantine", *([sub] if sub else []), "--help"])
    assert res.exit_code == 0, res.output
    assert "Example" in res.output and f"hullguard quarantine {sub}".rstrip() in res.output


def test_scan_help_shows_container_targets() -> None:
    res = CliRunner().invoke(app, ["scan", "--help"])
    assert "hullguard scan container:" in res.output and "hullguard scan --all-containers" in res.output
