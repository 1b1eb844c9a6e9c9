"""Scan targets as the user types them: a path, or ``SOURCE:REFERENCE`` for other sources.

``hullguard scan /srv container:web image:nginx:1.27`` — each argument is resolved to one or
more trees to walk. Sources register a resolver under their prefix (:func:`register_source`),
so adding container or image scans does not touch the dispatcher here.

Rules, in order: a registered ``prefix:`` selects its resolver; a prefix of a source this
build does not have yet is an error that says so; anything else is a host path (write
``./name:with:colons`` for a file whose name looks like a prefix). Host paths are resolved
with ``realpath`` once, here; everything below is walked without following symlinks.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hullguard.objects.hostfs import WalkProblem, join
from hullguard.objects.scanobject import ObjectContext, Scope
from hullguard.objects.uri import ObjectURI, escape_text


class TargetError(ValueError):
    """A target that cannot be scanned as written; the message says what to write instead."""


@dataclass(frozen=True)
class TreeTarget:
    """A directory tree (or one file in it) reachable on the host, walked below ``root``.

    ``root`` is an absolute, resolved directory that a walk never leaves; ``start`` is the
    path below it where the walk begins (empty: the whole root; a file name: only that file).
    ``uri_base`` and ``path_prefix`` name what is found: the URI of ``root/rel`` is
    ``uri_base.with_path(path_prefix + "/" + rel)`` (the host path for ``file://``; the path
    inside the container, with ``path_prefix`` ``/``, for ``docker://``).
    """

    text: str
    root: bytes
    start: bytes = b""
    uri_base: ObjectURI = field(default_factory=lambda: ObjectURI("file"))
    path_prefix: bytes | None = None
    """None means ``root`` (host paths)."""
    context: ObjectContext = field(default_factory=ObjectContext)
    unreachable: WalkProblem | None = None
    """Set when the tree could not be reached safely while targets were resolved (e.g. a bind
    mount whose host path now leads through a symlink): reported as not scanned, never walked,
    because walking ``root`` by its path string again could follow what was refused."""

    @property
    def prefix(self) -> bytes:
        return self.root if self.path_prefix is None else self.path_prefix

    def display_path(self, relpath: bytes) -> bytes:
        """The path users know this file by (host path, or path inside the container)."""
        return join(self.prefix, relpath) or b"/"

    def uri_for(self, relpath: bytes) -> ObjectURI:
        return self.uri_base.with_path(self.display_path(relpath))


Target = TreeTarget
"""Every kind of target the on-demand scan can walk; image-layer streams will join this union."""

Resolver = Callable[[str], Sequence[Target]]
"""Resolves the text after ``prefix:`` to trees; raises :class:`TargetError` with a helpful message."""


@dataclass(frozen=True)
class _Source:
    resolver: Resolver
    usage: str


_SOURCES: dict[str, _Source] = {}
PLANNED_SOURCES: dict[str, str] = {
    "container": "container:NAME|ID",
    "image": "image:NAME[:TAG]",
    "docker-archive": "docker-archive:FILE.tar",
    "oci": "oci:DIR",
    "containerd": "containerd:[NAMESPACE/]IMAGE",
    "podman": "podman:NAME|ID",
}
"""Prefixes the design reserves; until a source registers, using one is a clear error."""
_PREFIX_RE = re.compile(r"^(?P<prefix>[a-z][a-z0-9-]*):(?P<rest>.*)$", re.DOTALL)


def register_source(prefix: str, resolver: Resolver, usage: str = "") -> None:
    """Make ``prefix:REFERENCE`` targets resolve with ``resolver`` (replacing an earlier one)."""
    if not _PREFIX_RE.match(prefix + ":"):
        raise ValueError(f"invalid target prefix {prefix!r}")
    _SOURCES[prefix] = _Source(resolver, usage or PLANNED_SOURCES.get(prefix, f"{prefix}:REFERENCE"))


def registered_sources() -> dict[str, str]:
    """Prefix -> usage text of every source available in this build."""
    return {p: s.usage for p, s in sorted(_SOURCES.items())}


def resolve_targets(texts: Sequence[str]) -> list[Target]:
    """Resolve every argument first, so a typo fails the run before anything is scanned."""
    if not texts:
        raise TargetError("nothing to scan: give at least one path (or container:NAME, image:NAME)")
    out: list[Target] = []
    for text in texts:
        out.extend(resolve_target(text))
    return out


def resolve_target(text: str) -> list[Target]:
    m = _PREFIX_RE.match(text)
    if m and not text.startswith(("/", ".")):
        prefix, rest = m.group("prefix"), m.group("rest")
        shown = escape_text(text)
        source = _SOURCES.get(prefix)
        if source is not None:
            if not rest:
                raise TargetError(f"{shown}: nothing after '{prefix}:'; write {source.usage}")
            return list(source.resolver(rest))
        if prefix in PLANNED_SOURCES:
            raise TargetError(f"{shown}: scanning {prefix}: targets is not available in this build; "
                              f"available: {_available()}")
        if not os.path.lexists(os.fsencode(text)):
            raise TargetError(f"{shown}: unknown target type '{prefix}:'; use one of {_available()} "
                              f"(for a file whose name contains ':', write ./{shown})")
    return [resolve_path(text)]


def _available() -> str:
    usages = ["PATH", *registered_sources().values()]
    return ", ".join(usages)


def resolve_path(text: str) -> TreeTarget:
    """A host path: resolved once with ``realpath``; a directory is walked, a file scanned alone."""
    if not text:
        raise TargetError("empty path given as scan target")
    raw = os.fsencode(text)
    shown = escape_text(text)
    try:
        os.stat(raw)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            what = "dangling symbolic link" if os.path.islink(raw) else "no such file or directory"
            raise TargetError(f"{shown}: {what}") from None
        if exc.errno == errno.ELOOP:
            raise TargetError(f"{shown}: symbolic link loop") from None
        raise TargetError(f"{shown}: cannot access: {exc.strerror}") from None
    real = os.path.realpath(raw)
    try:
        st = os.lstat(real)
    except OSError as exc:
        raise TargetError(f"{shown}: cannot access: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return TreeTarget(text, real, context=ObjectContext(Scope.HOST))
    parent, name = os.path.split(real)
    return TreeTarget(text, parent or b"/", name, context=ObjectContext(Scope.HOST))
