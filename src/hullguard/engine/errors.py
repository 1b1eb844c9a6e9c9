"""Errors raised while loading signatures.

Scanning never raises for bad input (see :mod:`hullguard.engine.verdict`); only loading a
signature set can fail, and then the message must point at the line to fix.
"""

from __future__ import annotations

from pathlib import Path


class SignatureError(ValueError):
    """A signature file or directory that cannot be loaded; ``str()`` is ``file:line: message``."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
