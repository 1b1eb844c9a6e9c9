"""What every command needs: the loaded configuration and the user's global options."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import typer

from hullguard.agent.config import Config, load_config


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 100."""


@dataclass
class AppState:
    config_path: Path | None = None
    state_dir: str | None = None
    signatures: tuple[str, ...] = ()
    debug: bool = False
    _config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            cfg = load_config(self.config_path, self.state_dir)
            if self.signatures:
                cfg = replace(cfg, engine=replace(
                    cfg.engine, signature_dirs=cfg.engine.signature_dirs + self.signatures))
            self._config = cfg
        return self._config


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppState):
        obj = AppState()
        ctx.find_root().obj = obj
    return obj
