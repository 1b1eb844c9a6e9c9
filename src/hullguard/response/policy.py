"""Which remedy applies to a detection, decided only by where the object lives.

The scope (host, container layer, volume, image, ...) is the one thing that changes what we
may do: deleting a file from a container's image layer breaks the image for every container
that shares it, while a file on the host or a volume belongs to one place and can be removed.
So the policy is a table of one remedy per scope; the doors (on-demand scan, real-time,
proxy) ask :func:`decide` and hand the result to :mod:`hullguard.response.remediate`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from hullguard.objects.scanobject import Scope


class Remedy(StrEnum):
    """What to do with a detected object; turned into an :class:`~hullguard.response.actions.Action`."""

    CLEAN = "clean"
    """Delete the file."""
    QUARANTINE = "quarantine"
    """Move the file into the quarantine store (restorable)."""
    RETAIN = "retain"
    """Leave the file where it is, record the detection."""
    BLOCK = "block"
    """Deny the access (real-time, proxy); the file itself is left alone."""
    REPORT = "report"
    """Only record; used where nothing can be changed (images)."""

    @property
    def removes(self) -> bool:
        return self in (Remedy.CLEAN, Remedy.QUARANTINE)


class RemediationLevel(StrEnum):
    """How far a removing remedy may go, in the style of classic products (``[response] level``).

    ``always``: apply the scope's remedy, even when that removes a whole archive for one
    infected member. ``safe``: apply it only when nothing but the threat is lost; a detection
    inside an archive is kept (Retained, with the reason). ``never``: remove nothing, only record.
    Whatever the level, a file is never removed where removing is out of bounds: in a
    container's private mount namespace, or hard-linked (see :mod:`hullguard.response.remediate`).
    """

    ALWAYS = "always"
    SAFE = "safe"
    NEVER = "never"


@dataclass(frozen=True)
class PolicyConfig:
    """The ``[response]`` section: one remedy per scope.

    Defaults: host files and volumes are cleaned, files in container layers and private
    container storage are retained (the container keeps running; an operator decides),
    image layers are only reported, HTTP downloads are blocked.
    """

    host: Remedy = Remedy.CLEAN
    container: Remedy = Remedy.RETAIN
    volume: Remedy = Remedy.CLEAN
    container_private: Remedy = Remedy.RETAIN
    image: Remedy = Remedy.REPORT
    http: Remedy = Remedy.BLOCK
    level: RemediationLevel = RemediationLevel.ALWAYS
    """``always`` / ``safe`` / ``never``: see :class:`RemediationLevel`."""
    quarantine_max_size: int = 400 * 1024 * 1024
    """Files larger than this many bytes are not quarantined (the original stays, with an error)."""

    def for_scope(self, scope: Scope) -> Remedy:
        return decide(scope, self)

    def on_demand(self, *, clean: bool) -> PolicyConfig:
        """The policy of one on-demand scan run.

        An on-demand scan changes nothing unless asked to: without ``clean`` every remedy
        that removes a file becomes RETAIN; with it, host files are cleaned for this run and
        the other scopes keep their configured remedy.
        """
        if clean:
            return replace(self, host=Remedy.CLEAN)

        def keep(remedy: Remedy) -> Remedy:
            return Remedy.RETAIN if remedy.removes else remedy

        return replace(self, host=keep(self.host), container=keep(self.container),
                       volume=keep(self.volume), container_private=keep(self.container_private),
                       image=keep(self.image), http=keep(self.http))


_FIELD_OF_SCOPE: dict[Scope, str] = {
    Scope.HOST: "host",
    Scope.CONTAINER_LAYER: "container",
    Scope.VOLUME: "volume",
    Scope.CONTAINER_PRIVATE: "container_private",
    Scope.IMAGE: "image",
    Scope.HTTP: "http",
}


def decide(scope: Scope, policy: PolicyConfig) -> Remedy:
    remedy: Remedy = getattr(policy, _FIELD_OF_SCOPE[scope])
    if policy.level is RemediationLevel.NEVER and remedy.removes:
        return Remedy.RETAIN
    return remedy
