"""The Docker authorization plugin protocol, served over a UNIX socket.

dockerd (started with ``--authorization-plugin=NAME``) finds the plugin at
``/run/docker/plugins/NAME.sock`` and POSTs JSON to it: ``/Plugin.Activate`` once, then
``/AuthZPlugin.AuthZReq`` before and ``/AuthZPlugin.AuthZRes`` after every API call (the
shorter ``AuthReq``/``AuthRes`` spellings are accepted too). The
answer is ``{"Allow": bool, "Msg": str, "Err": str}``; a denial's ``Msg`` reaches the user as
``Error response from daemon: authorization denied by plugin NAME: MSG``.

Written on the standard library's threading HTTP server: the protocol is four small JSON
endpoints, and requests must be answered concurrently (a decision may itself call the
Docker API, which passes through this plugin again).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024 * 1024
"""dockerd forwards bodies up to 1 MiB (base64 in JSON); anything far larger is refused."""


@dataclass(frozen=True)
class AuthRequest:
    method: str
    uri: str
    user: str = ""
    body: bytes | None = None
    """None when dockerd did not forward the body (too large, not JSON, or absent)."""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The API path without query and without the ``/v1.41`` version prefix."""
        path = self.uri.split("?", 1)[0]
        parts = path.split("/")
        if len(parts) > 1 and parts[1].startswith("v") and parts[1][1:].replace(".", "").isdigit():
            path = "/" + "/".join(parts[2:])
        return path

    def header(self, name: str) -> str:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return ""


@dataclass(frozen=True)
class AuthDecision:
    allow: bool
    msg: str = ""


Decider = Callable[[AuthRequest], AuthDecision]


def parse_auth_request(doc: dict[str, Any]) -> AuthRequest:
    raw = doc.get("RequestBody")
    body: bytes | None = None
    if isinstance(raw, str) and raw:
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            body = None
    headers = doc.get("RequestHeaders") or {}
    uri = doc.get("RequestUri") or doc.get("RequestURI") or ""  # Go's json tag is RequestUri
    return AuthRequest(method=str(doc.get("RequestMethod", "")), uri=str(uri),
                       user=str(doc.get("User", "")), body=body,
                       headers={str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {})


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("authz plugin: " + format, *args)

    def _reply(self, doc: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1.2+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "dockerd"

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST:
            self._reply({"Allow": False, "Err": "hullguard: invalid request size"}, 400)
            return
        raw = self.rfile.read(length) if length else b""
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = None
        if self.path == "/Plugin.Activate":
            self._reply({"Implements": ["authz"]})
        elif self.path in ("/AuthZPlugin.AuthZReq", "/AuthZPlugin.AuthReq"):
            if not isinstance(doc, dict):
                self._reply({"Allow": False, "Msg": "hullguard: malformed authorization request"})
                return
            decision = self.server.decide_safely(parse_auth_request(doc))
            self._reply({"Allow": decision.allow, "Msg": decision.msg, "Err": ""})
        elif self.path in ("/AuthZPlugin.AuthZRes", "/AuthZPlugin.AuthRes"):
            self._reply({"Allow": True, "Msg": "", "Err": ""})
        else:
            self._reply({"Err": f"unknown endpoint {self.path}"}, 404)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, decider: Decider) -> None:
        self.decider = decider
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(path, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        with self.conn_lock:
            self.connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """dockerd keeps connections alive; a stopped plugin must not go on answering on them."""
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def decide_safely(self, req: AuthRequest) -> AuthDecision:
        try:
            return self.decider(req)
        except Exception as exc:  # a bug must not let a checked call through: deny it
            log.exception("authorization decision failed")
            return AuthDecision(False, f"hullguard: internal error while checking the request: {exc}")


class AuthzPluginServer:
    """Serves the plugin at ``plugin_dir/NAME.sock`` in a thread; :meth:`stop` removes the socket."""

    def __init__(self, name: str, decider: Decider, plugin_dir: str | Path = "/run/docker/plugins") -> None:
        self.name = name
        self.socket_path = Path(plugin_dir) / f"{name}.sock"
        self._decider = decider
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            if self.socket_path.is_socket() and not _alive(self.socket_path):
                self.socket_path.unlink()  # left over by an agent that died
        old = os.umask(0o077)
        try:
            self._server = _Server(str(self.socket_path), self._decider)
        finally:
            os.umask(old)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"authz-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
