"""The one Docker API call a warm ``image:`` re-scan needs, without the Docker SDK.

When every layer of an image is already in the layer cache, the scan needs nothing but
``GET /images/NAME/json`` (its diff_ids). Importing the Docker SDK (requests, urllib3,
charset_normalizer) costs about 0.2 s on these machines, more than the rest of a warm scan,
so that single GET goes over the daemon's UNIX socket with the standard library. Anything
else (the export stream, a missing image's error message, TCP or SSH daemons) goes through
the SDK: this module only answers when it can answer exactly.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"
MAX_INSPECT = 16 << 20


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def unix_socket_path(docker_host: str = "") -> str | None:
    """The daemon's socket path for ``docker_host``/``$DOCKER_HOST``, None for a non-UNIX daemon."""
    host = docker_host or os.environ.get("DOCKER_HOST", "") or f"unix://{DEFAULT_SOCKET}"
    return host[len("unix://"):] if host.startswith("unix://") else None


def inspect_image(name: str, docker_host: str = "", timeout: float = 10.0) -> dict[str, Any] | None:
    """The image's inspect document, or None whenever this short cut cannot answer.

    None covers a non-UNIX daemon, no such image, and any error: the caller then asks the SDK,
    which reports those cases properly.
    """
    path = unix_socket_path(docker_host)
    if path is None:
        return None
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", f"/images/{urllib.parse.quote(name, safe='/:@')}/json")
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        data = json.loads(resp.read(MAX_INSPECT))
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return data if isinstance(data, dict) else None
