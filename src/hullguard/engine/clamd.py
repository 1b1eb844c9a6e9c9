"""Optional ClamAV backend: objects are also sent to a running clamd over its UNIX socket.

Written by hand because the protocol is three commands and the maintained Python clients
(``clamd``, ``pyclamd``) are unmaintained or lack fd passing. File descriptors go with
``zFILDES`` and ``SCM_RIGHTS`` (clamd reads the same open file, no path is reopened, no copy
is made); in-memory data and streams go with ``zINSTREAM`` chunks. One connection per
request keeps it thread-safe and robust against clamd restarts.

clamd unpacks archives itself, so only top-level objects are sent.
"""

from __future__ import annotations

import array
import contextlib
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hullguard.engine.verdict import Detection, NotScannedReason, Verdict

_CHUNK = 256 * 1024
_MAX_REPLY = 64 * 1024

_CATEGORY_TYPES = {
    "trojan": "Trojan",
    "virus": "Virus",
    "worm": "Worm",
    "exploit": "Exploit",
    "backdoor": "Backdoor",
    "ransomware": "Ransomware",
    "spyware": "Spyware",
    "adware": "Adware",
    "downloader": "Downloader",
    "dropper": "Dropper",
    "coinminer": "Coin miner",
    "miner": "Coin miner",
    "phishing": "Phishing",
    "rootkit": "Rootkit",
    "webshell": "Backdoor",
}


def type_from_name(name: str) -> str:
    """Journal type from a ClamAV name ``Platform.Category.Name-id-rev``; ``Malware`` if unknown."""
    if name.lower().startswith("eicar"):
        return "Test file"
    parts = name.split(".")
    if len(parts) >= 3:
        return _CATEGORY_TYPES.get(parts[1].lower(), "Malware")
    return "Malware"


class ClamdError(Exception):
    """clamd could not be reached or answered with an error."""


@dataclass(frozen=True)
class ClamdReply:
    found: str = ""
    """Detection name, empty when clean."""
    error: str = ""

    def verdicts(self) -> list[Verdict]:
        if self.error:
            reason = NotScannedReason.TOO_LARGE if "size limit" in self.error else NotScannedReason.ERROR
            return [Verdict.not_scanned(reason, f"clamd: {self.error}")]
        if self.found:
            det = Detection(
                name=self.found,
                type=type_from_name(self.found),
                tags=Detection.make_tags(self.found, "ClamAV"),
                signature=f"clamav:{self.found}",
                engine="clamav",
            )
            return [Verdict.detected(det, "")]
        return []


def parse_reply(raw: bytes) -> ClamdReply:
    """``stream: Eicar-Signature FOUND`` / ``fd[5]: OK`` / ``... ERROR``."""
    text = raw.rstrip(b"\x00\n").decode("utf-8", "replace").strip()
    if text.endswith(" FOUND"):
        body = text[: -len(" FOUND")]
        _, _, name = body.rpartition(": ")
        return ClamdReply(found=name.strip() or body)
    if text.endswith(" ERROR"):
        return ClamdReply(error=text[: -len(" ERROR")])
    if text.endswith(": OK") or text == "OK":
        return ClamdReply()
    return ClamdReply(error=f"unexpected reply {text[:200]!r}")


class ClamdClient:
    """Sends objects to clamd at ``socket_path``; every failure becomes a ``NOT_SCANNED``
    verdict with the reason, never an exception out of :meth:`scan_fd`/:meth:`scan_bytes`."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    @staticmethod
    def _reply(sock: socket.socket) -> bytes:
        parts: list[bytes] = []
        total = 0
        while total < _MAX_REPLY:
            chunk = sock.recv(4096)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            if chunk.endswith(b"\x00"):
                break
        return b"".join(parts)

    def _run(self, action: str, send: Callable[[socket.socket], None]) -> list[Verdict]:
        try:
            with self._connect() as sock:
                # clamd may stop reading early (size limit) and still say why: read the reply
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    send(sock)
                raw = self._reply(sock)
        except TimeoutError:
            detail = f"clamd: no answer within {self.timeout:g} s"
            return [Verdict.not_scanned(NotScannedReason.TIMEOUT, detail)]
        except OSError as exc:
            detail = f"clamd at {self.socket_path} unavailable ({action}): {exc.strerror or exc}"
            return [Verdict.not_scanned(NotScannedReason.ERROR, detail)]
        if not raw:
            detail = "clamd closed the connection without a reply"
            return [Verdict.not_scanned(NotScannedReason.ERROR, detail)]
        return parse_reply(raw).verdicts()

    def scan_fd(self, fd: int) -> list[Verdict]:
        def send(sock: socket.socket) -> None:
            sock.sendall(b"zFILDES\x00")
            rights = array.array("i", [fd]).tobytes()
            sock.sendmsg([b"\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])

        return self._run("FILDES", send)

    def scan_chunks(self, chunks: Iterable[bytes]) -> list[Verdict]:
        def send(sock: socket.socket) -> None:
            sock.sendall(b"zINSTREAM\x00")
            for chunk in chunks:
                view = memoryview(chunk)
                for start in range(0, len(view), _CHUNK):
                    part = view[start : start + _CHUNK]
                    sock.sendall(struct.pack(">I", len(part)))
                    sock.sendall(part)
            sock.sendall(struct.pack(">I", 0))

        return self._run("INSTREAM", send)

    def scan_bytes(self, data: bytes) -> list[Verdict]:
        return self.scan_chunks([data])

    def ping(self) -> bool:
        def send(sock: socket.socket) -> None:
            sock.sendall(b"zPING\x00")

        try:
            with self._connect() as sock:
                send(sock)
                return self._reply(sock).rstrip(b"\x00\n") == b"PONG"
        except OSError:
            return False
