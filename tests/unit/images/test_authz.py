"""The authorization plugin protocol over a real UNIX socket, and the gate's request checks."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from pathlib import Path

from hullguard.agent.authzplugin import AuthDecision, AuthRequest, AuthzPluginServer, parse_auth_request
from hullguard.agent.imagegate import ImageGate


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("plugin")
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def post(path: Path, endpoint: str, doc: object) -> dict[str, object]:
    conn = _UnixHTTP(str(path))
    conn.request("POST", endpoint, body=json.dumps(doc), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    out: dict[str, object] = json.loads(resp.read())
    conn.close()
    return out


def test_protocol_over_unix_socket(tmp_path: Path) -> None:
    seen: list[AuthRequest] = []

    def decide(req: AuthRequest) -> AuthDecision:
        seen.append(req)
        return AuthDecision(req.path != "/containers/create", "no")

    server = AuthzPluginServer("hgunit", decide, tmp_path)
    server.start()
    try:
        assert post(server.socket_path, "/Plugin.Activate", {}) == {"Implements": ["authz"]}
        body = base64.b64encode(b'{"Image": "x"}').decode()
        denied = post(server.socket_path, "/AuthZPlugin.AuthZReq",
                      {"RequestMethod": "POST", "RequestUri": "/v1.41/containers/create?name=a",
                       "RequestBody": body, "User": "root"})
        assert denied == {"Allow": False, "Msg": "no", "Err": ""}
        assert seen[0].body == b'{"Image": "x"}' and seen[0].path == "/containers/create"
        allowed = post(server.socket_path, "/AuthZPlugin.AuthZReq", {"RequestMethod": "GET", "RequestUri": "/_ping"})
        assert allowed["Allow"] is True
        assert post(server.socket_path, "/AuthZPlugin.AuthZRes", {})["Allow"] is True
    finally:
        server.stop()
    assert not server.socket_path.exists()


def test_decider_errors_deny(tmp_path: Path) -> None:
    def broken(req: AuthRequest) -> AuthDecision:
        raise RuntimeError("boom")

    server = AuthzPluginServer("hgunit2", broken, tmp_path)
    server.start()
    try:
        out = post(server.socket_path, "/AuthZPlugin.AuthZReq", {"RequestMethod": "POST", "RequestUri": "/x"})
        assert out["Allow"] is False and "internal error" in str(out["Msg"])
    finally:
        server.stop()


class _NoJudge:
    """The request checks below must decide without looking at any image."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"judge.{name} used")


def test_gate_refuses_missing_cut_and_invalid_bodies() -> None:
    gate = ImageGate(_NoJudge())  # type: ignore[arg-type]
    missing = gate(parse_auth_request({"RequestMethod": "POST", "RequestUri": "/v1.41/containers/create"}))
    assert not missing.allow and "without a request body" in missing.msg
    body = b'{"Image": "busybox", "Cmd": ["true"]}'
    cut = gate(AuthRequest("POST", "/containers/create", body=body[:20], headers={"Content-Length": str(len(body))}))
    assert not cut.allow and "cut short" in cut.msg
    bad = gate(AuthRequest("POST", "/containers/create", body=body[:20]))
    assert not bad.allow and "not valid JSON" in bad.msg
    for method, uri in (("GET", "/v1.41/containers/json"), ("POST", "/v1.41/images/load"),
                        ("POST", "/v1.41/containers/abc/kill"), ("DELETE", "/containers/abc")):
        assert gate(AuthRequest(method, uri)).allow, uri


def test_version_prefix_and_query_are_stripped() -> None:
    assert AuthRequest("POST", "/v1.43/containers/abc/start?x=1").path == "/containers/abc/start"
    assert AuthRequest("POST", "/containers/create").path == "/containers/create"
    assert parse_auth_request({"RequestBody": "%%%not-base64"}).body is None
