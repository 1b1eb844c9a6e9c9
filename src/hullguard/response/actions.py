"""The actions a policy can pick; the value is the journal's Action text."""

from __future__ import annotations

from enum import Enum


class Action(str, Enum):
    RETAINED = "Retained"
    CLEANED_BY_DELETING = "Cleaned by deleting"
    QUARANTINED = "Quarantined"
    BLOCKED = "Blocked"
    NOT_SCANNED = "Not scanned"
    CLEAN_FAILED = "Cleaning failed"

    @property
    def removed_threat(self) -> bool:
        return self in (Action.CLEANED_BY_DELETING, Action.QUARANTINED)
