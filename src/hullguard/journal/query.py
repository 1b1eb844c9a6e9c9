"""Turning what a user types into journal filters: times, module names and kinds.

Kept here rather than in the CLI so the control API and the web UI accept the same spellings.
Every parser raises ``ValueError`` with a message fit to show the user as is.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hullguard.journal.record import Module, RecordKind

MODULE_ALIASES: dict[str, Module] = {
    "on-demand": Module.ON_DEMAND,
    "ondemand": Module.ON_DEMAND,
    "realtime": Module.REALTIME,
    "real-time": Module.REALTIME,
    "behaviour": Module.BEHAVIOUR,
    "behavior": Module.BEHAVIOUR,
    "web": Module.WEB,
    "image": Module.IMAGE,
    "admission": Module.ADMISSION,
    "quarantine": Module.QUARANTINE,
    "agent": Module.AGENT,
}

KIND_CHOICES: dict[str, tuple[RecordKind, ...]] = {
    "detection": (RecordKind.DETECTION,),
    "not_scanned": (RecordKind.NOT_SCANNED,),
    "not-scanned": (RecordKind.NOT_SCANNED,),
    "event": (RecordKind.EVENT,),
    "all": tuple(RecordKind),
}
DEFAULT_KINDS: tuple[RecordKind, ...] = (RecordKind.DETECTION, RecordKind.NOT_SCANNED)

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``10m``, ``2h``, ``7d``, ``1w`` (before now), or an ISO date/time (UTC unless it has an offset).

    ``2024-05-01``, ``2024-05-01 12:00``, ``2024-05-01T12:00:00Z``, ``2024-05-01T14:00+02:00``.
    """
    match = _RELATIVE.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=amount * _UNIT_SECONDS[unit])
        except OverflowError:
            raise ValueError(f"time {text!r} is too far back") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"cannot read the time {text!r}: expected an ISO date/time like 2024-05-01 or "
                         "2024-05-01T12:00 (UTC unless an offset is given), or a relative time like "
                         "10m, 2h, 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def resolve_module(text: str) -> str:
    """A module's full journal name from the full name (any case) or a short alias."""
    key = text.strip().lower()
    for module in Module:
        if module.value.lower() == key:
            return module.value
    alias = MODULE_ALIASES.get(key.replace("_", "-").replace(" ", "-"))
    if alias is not None:
        return alias.value
    raise ValueError(f"unknown module {text!r}; use one of: {', '.join(_short_aliases())} "
                     "(or the full name, like \"On-demand scan\")")


def _short_aliases() -> list[str]:
    seen: dict[Module, str] = {}
    for alias, module in MODULE_ALIASES.items():
        seen.setdefault(module, alias)
    return list(seen.values())


def module_alias(name: str) -> str:
    """The short alias of a module's full name (for narrow tables); the name itself when unknown."""
    for alias in _short_aliases():
        if MODULE_ALIASES[alias].value == name:
            return alias
    return name


def parse_kinds(text: str) -> tuple[RecordKind, ...]:
    kinds = KIND_CHOICES.get(text.strip().lower())
    if kinds is None:
        raise ValueError(f"unknown record kind {text!r}; use one of: detection, not_scanned, event, all")
    return kinds
