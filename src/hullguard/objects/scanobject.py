"""A thing to scan, what it is called, where it lives and why it is being scanned."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hullguard.objects.uri import ObjectURI


class ScanEvent(str, Enum):
    """What brought the object to the engine; the value is the journal's Event text."""

    CREATED = "Event occurred on a newly created file."
    MODIFIED = "Event occurred on a modified file."
    OPENED = "Event occurred on opening a file."
    EXECUTED = "Event occurred on executing a file."
    ON_DEMAND = "On-demand scan."
    DOWNLOADED = "Event occurred on downloading a file."
    PULLED = "Event occurred on pulling an image."
    DEPLOYED = "Event occurred on deploying a container."
    BUILT = "Event occurred while building an image."


class Scope(str, Enum):
    """Where an object lives, which decides what the policy may do to it."""

    HOST = "host"
    CONTAINER_LAYER = "container"
    VOLUME = "volume"
    CONTAINER_PRIVATE = "container-private"
    IMAGE = "image"
    HTTP = "http"


@dataclass(frozen=True)
class ContainerRef:
    id: str
    name: str = ""
    image: str = ""
    runtime: str = "docker"


@dataclass(frozen=True)
class ObjectContext:
    scope: Scope = Scope.HOST
    container: ContainerRef | None = None
    image: str = ""
    layer: str = ""
    mount: str = ""
    """The mount the object lies on, when it matters (container scans)."""


@dataclass(frozen=True)
class ScanObject:
    """One top-level object. ``host_path`` is set when the host can reach the file directly.

    Readers are not stored here: each door opens the bytes the safe way for its source
    (a dirfd walk, a fanotify event fd, a tar stream) and hands them to the engine.
    """

    uri: ObjectURI
    size: int = 0
    context: ObjectContext = ObjectContext()
    event: ScanEvent = ScanEvent.ON_DEMAND
    host_path: bytes | None = None
