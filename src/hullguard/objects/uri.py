"""Object names as URIs: the one way every module names what it scanned.

Forms (an archive member is appended with ``!/``)::

    file:///srv/a.zip!/inner/eicar.com
    docker://IMAGE@CONTAINER_ID/path/in/container
    docker-image://IMAGE@sha256:LAYER/path/in/layer
    containerd://NAMESPACE/IMAGE@sha256:LAYER/path
    podman://IMAGE@CONTAINER_ID_OR_LAYER/path
    http://host/path, https://host/path

Paths are kept as ``str`` decoded with ``surrogateescape`` so names that are not UTF-8
survive a round trip to bytes; :meth:`ObjectURI.display` escapes them (and control
characters) for output and storage.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

MEMBER_SEP = "!/"
_REF_SCHEMES = {"docker", "docker-image", "containerd", "podman"}
_REF = r"(?:sha256:[0-9a-f]{64}|[0-9a-f]{12,64})"
_REF_RE = re.compile(rf"^(?P<image>.*?)@(?P<ref>{_REF})(?P<path>/.*)?$", re.DOTALL)


def escape_text(text: str) -> str:
    """Make text safe for terminals, CSV and SQLite: escape control chars and undecodable bytes."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape'd byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif ch == "\\":
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


def fs_text(raw: bytes | str) -> str:
    """A filesystem name as ``str`` that maps back to the same bytes."""
    return os.fsdecode(raw) if isinstance(raw, bytes) else raw


@dataclass(frozen=True)
class ObjectURI:
    scheme: str
    path: str = ""
    """Absolute path inside the object's root (host, container, layer); the URL path for http(s)."""
    image: str = ""
    ref: str = ""
    """Container id, or layer digest (``sha256:...``)."""
    namespace: str = ""
    host: str = ""
    """Host (and port) part of http(s) URLs."""
    inner: tuple[str, ...] = ()

    # --- constructors -------------------------------------------------------------------
    @staticmethod
    def file(path: str | bytes) -> ObjectURI:
        return ObjectURI("file", fs_text(path))

    @staticmethod
    def docker(image: str, container_id: str, path: str | bytes) -> ObjectURI:
        return ObjectURI("docker", fs_text(path), image=image, ref=container_id)

    @staticmethod
    def docker_image(image: str, layer: str, path: str | bytes) -> ObjectURI:
        return ObjectURI("docker-image", fs_text(path), image=image, ref=layer)

    @staticmethod
    def containerd(namespace: str, image: str, layer: str, path: str | bytes) -> ObjectURI:
        return ObjectURI("containerd", fs_text(path), image=image, ref=layer, namespace=namespace)

    def child(self, *members: str) -> ObjectURI:
        """The URI of a member inside this object (an archive)."""
        return replace(self, inner=self.inner + tuple(members))

    def with_path(self, path: str | bytes) -> ObjectURI:
        return replace(self, path=fs_text(path))

    # --- printing and parsing -----------------------------------------------------------
    def display(self) -> str:
        """The URI as text; safe to print and store (see :func:`escape_text`)."""
        return escape_text(str(self))

    def __str__(self) -> str:
        path = self.path if self.path.startswith("/") or not self.path else "/" + self.path
        if self.scheme == "file":
            base = f"file://{path}"
        elif self.scheme in ("http", "https"):
            base = f"{self.scheme}://{self.host}{path}"
        elif self.scheme == "containerd":
            base = f"containerd://{self.namespace}/{self.image}@{self.ref}{path}"
        else:
            base = f"{self.scheme}://{self.image}@{self.ref}{path}"
        return base + "".join(MEMBER_SEP + m.lstrip("/") for m in self.inner)

    @staticmethod
    def parse(text: str) -> ObjectURI:
        scheme, sep, rest = text.partition("://")
        if not sep or not scheme:
            raise ValueError(f"not an object URI (no scheme): {text!r}")
        parts = rest.split(MEMBER_SEP)
        rest, inner = parts[0], tuple(parts[1:])
        if scheme == "file":
            if not rest.startswith("/"):
                raise ValueError(f"file URI needs an absolute path: {text!r}")
            return ObjectURI("file", rest, inner=inner)
        if scheme in ("http", "https"):
            host, slash, path = rest.partition("/")
            return ObjectURI(scheme, slash + path, host=host, inner=inner)
        if scheme not in _REF_SCHEMES:
            raise ValueError(f"unknown URI scheme {scheme!r} in {text!r}")
        namespace = ""
        if scheme == "containerd":
            namespace, slash, rest = rest.partition("/")
            if not slash:
                raise ValueError(f"containerd URI needs a namespace: {text!r}")
        m = _REF_RE.match(rest)
        if not m or not m.group("image"):
            raise ValueError(f"{scheme} URI needs IMAGE@REF: {text!r}")
        return ObjectURI(
            scheme,
            m.group("path") or "",
            image=m.group("image"),
            ref=m.group("ref"),
            namespace=namespace,
            inner=inner,
        )
