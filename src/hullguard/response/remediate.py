"""Carrying out a remedy on one detected object: the single place a Remedy becomes an Action.

Handlers are looked up by remedy in a registry, so quarantine (and later container-aware
cleaning) plugs in with :func:`register` without touching the doors that call
:func:`remediate`. A remedy with no handler able to act on the object is never a silent
success: the object is left where it is and the action says so (``Retained``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from hullguard.engine.verdict import Verdict
from hullguard.objects.hostfs import RootedFile, open_dir_at, open_dir_beneath
from hullguard.objects.scanobject import ScanObject, Scope
from hullguard.response.actions import Action
from hullguard.response.clean import delete_in_root, split_relpath
from hullguard.response.policy import RemediationLevel, Remedy

PRIVATE_NAMESPACE = "only in the container's private mount namespace"
"""A file reachable only through a container's own mount namespace (a tmpfs inside it) is not
the host's to remove: it is reported and left alone, whatever the configuration says."""
HARD_LINKED = "hard-linked"
IMAGE_LAYER = "in an image layer shared by every container of the image; rebuild the image"
"""An image layer directory is never written: removing a file there would change the image."""


@dataclass(frozen=True)
class Remediation:
    action: Action
    detail: str = ""
    """Why the action is not what the remedy asked for (e.g. "inode changed"), for the journal's Info."""


Handler = Callable[[ScanObject, Verdict, RootedFile | None], Remediation]
_HANDLERS: dict[Remedy, Handler] = {}
Guard = Callable[[ScanObject, Verdict, RootedFile | None], Remediation | None]
"""Vetoes a removing remedy by returning the Remediation to record instead (or None to allow)."""
_GUARDS: list[Guard] = []


def register(remedy: Remedy, handler: Handler) -> None:
    """Install (or replace) the handler for a remedy; e.g. the quarantine store registers QUARANTINE."""
    _HANDLERS[remedy] = handler


def register_guard(guard: Guard) -> None:
    """Add a check that runs before every removing remedy (after the built-in ones)."""
    if guard not in _GUARDS:
        _GUARDS.append(guard)


def remediate(obj: ScanObject, verdict: Verdict, remedy: Remedy, *,
              location: RootedFile | None = None,
              level: RemediationLevel = RemediationLevel.ALWAYS) -> Remediation:
    """Apply ``remedy`` to the object a detection was found in (for archive members: the archive).

    ``location`` is where the file can be reached from the host through a root; without it
    nothing can be removed. Never raises for OS errors: failures are ``Cleaning failed``.
    A removing remedy first passes the remediation ``level`` and the guards (private mount
    namespace, hard links, registered ones); a veto is recorded as ``Retained`` with its reason.
    """
    if obj.context.scope is Scope.CONTAINER_PRIVATE:  # whatever the remedy: report, never touch
        return Remediation(Action.RETAINED, PRIVATE_NAMESPACE)
    if remedy.removes:
        if level is RemediationLevel.NEVER:
            return Remediation(Action.RETAINED, "remediation level 'never'")
        if level is RemediationLevel.SAFE and verdict.inner:
            return Remediation(Action.RETAINED, "inside an archive: remediation level 'safe' keeps it")
        if obj.context.scope is Scope.IMAGE:
            return Remediation(Action.RETAINED, IMAGE_LAYER)
        for guard in (_hardlink_guard, *_GUARDS):
            held = guard(obj, verdict, location)
            if held is not None:
                return held
    handler = _HANDLERS.get(remedy)
    if handler is None:
        detail = f"no handler for remedy {remedy.value!r}" if remedy.removes else ""
        return Remediation(Action.RETAINED, detail)
    return handler(obj, verdict, location)


def _clean(obj: ScanObject, verdict: Verdict, location: RootedFile | None) -> Remediation:
    del obj, verdict
    if location is None:
        return Remediation(Action.RETAINED, "not reachable on the host file system")
    action = delete_in_root(location.root, location.relpath, expect=(location.dev, location.ino))
    return Remediation(action, "" if action is Action.CLEANED_BY_DELETING
                       else "file could not be deleted safely (changed, replaced or permission denied)")


def _hardlink_guard(obj: ScanObject, verdict: Verdict, location: RootedFile | None) -> Remediation | None:
    """In container trees (layers, volumes, bind mounts), a file with more than one link is kept.

    Unlinking one name does not remove the content, and the other names may lie outside the
    scanned root (a host file hard-linked into a volume): the threat would not be gone and a
    quarantine would take a host file's content. Host scans keep plain cleaning semantics.
    """
    del verdict
    if location is None or obj.context.scope is Scope.HOST:
        return None
    nlink = _link_count(location)
    if nlink is not None and nlink > 1:
        return Remediation(Action.RETAINED, f"{HARD_LINKED} ({nlink} links)")
    return None


def _link_count(location: RootedFile) -> int | None:
    parts = split_relpath(location.relpath)
    if parts is None:
        return None
    try:
        root_fd = open_dir_at(None, location.root)
        try:
            dir_fd = open_dir_beneath(root_fd, b"/".join(parts[:-1]))
        finally:
            os.close(root_fd)
        try:
            st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        finally:
            with contextlib.suppress(OSError):
                os.close(dir_fd)
    except OSError:
        return None  # the handler reports the failure
    if (st.st_dev, st.st_ino) != (location.dev, location.ino):
        return None
    return st.st_nlink


def _retain(obj: ScanObject, verdict: Verdict, location: RootedFile | None) -> Remediation:
    del obj, verdict, location
    return Remediation(Action.RETAINED)


def _block(obj: ScanObject, verdict: Verdict, location: RootedFile | None) -> Remediation:
    """Blocking is the access-time door's job; for a file at rest it means leaving it in place."""
    del obj, verdict, location
    return Remediation(Action.RETAINED)


register(Remedy.CLEAN, _clean)
register(Remedy.RETAIN, _retain)
register(Remedy.REPORT, _retain)
register(Remedy.BLOCK, _block)
