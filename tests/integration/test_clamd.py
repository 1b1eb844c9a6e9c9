"""The ClamAV backend against a real clamd started by the test (Debian's /usr/sbin/clamd).

clamd runs in the foreground with a private config, socket and database directory holding
a test database written here: an MD5 signature of a crafted harmless file. No freshclam,
no network. clamd is killed and everything removed even when a test fails.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hullguard.engine.clamd import ClamdClient, parse_reply
from hullguard.engine.engine import Engine
from hullguard.engine.verdict import NotScannedReason, ScanOutcome

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLAMD = "/usr/sbin/clamd"
SAMPLE = b"hullguard clamd integration sample: harmless crafted bytes\n" * 3
SIG_NAME = "Hullguard.Test.Crafted"
FOUND = f"{SIG_NAME}.UNOFFICIAL"  # clamd marks names from unsigned databases


@pytest.fixture(scope="module")
def clamd_socket() -> Iterator[str]:
    if not os.path.exists(CLAMD):
        pytest.skip("clamd is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="hg-clamd-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        db = tmp / "db"
        db.mkdir()
        (db / "hullguard-test.hdb").write_text(f"{hashlib.md5(SAMPLE).hexdigest()}:{len(SAMPLE)}:{SIG_NAME}\n")
        sock = tmp / "clamd.sock"
        conf = tmp / "clamd.conf"
        conf.write_text(
            f"LocalSocket {sock}\nDatabaseDirectory {db}\nForeground yes\nLogFile {tmp / 'clamd.log'}\n"
            f"PidFile {tmp / 'clamd.pid'}\nTemporaryDirectory {tmp}\nUser root\nLogTime yes\n"
            "StreamMaxLength 1M\nMaxThreads 2\nBytecode no\n"
        )
        proc = subprocess.Popen([CLAMD, "--foreground", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        client = ClamdClient(str(sock), timeout=5)
        deadline = time.monotonic() + 120
        while not client.ping():
            if proc.poll() is not None:
                log = (tmp / "clamd.log").read_text(errors="replace") if (tmp / "clamd.log").exists() else ""
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"clamd exited with {proc.returncode}: {err}\n{log}")
            if time.monotonic() > deadline:
                pytest.fail("clamd socket did not come up within 120 s")
            time.sleep(0.2)
        yield str(sock)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc is not None and proc.stderr:
            proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _clamav(out: ScanOutcome) -> list[str]:
    return [v.detection.name for v in out.detections if v.detection and v.detection.engine == "clamav"]


def test_fildes_and_instream(clamd_socket: str, tmp_path: Path) -> None:
    eng = Engine.load(clamd_socket=clamd_socket, clamd_timeout=10)
    path = tmp_path / "sample.bin"
    path.write_bytes(SAMPLE)
    fd = os.open(path, os.O_RDONLY)
    try:
        out = eng.scan_fd(fd)
    finally:
        os.close(fd)
    assert _clamav(out) == [FOUND]
    det = out.detections[0].detection
    assert det is not None and det.tags == f"@NAME={FOUND}@TYPE=ClamAV@SUSP=inf"
    assert _clamav(eng.scan_bytes(SAMPLE)) == [FOUND]
    assert _clamav(eng.scan_stream(io.BytesIO(SAMPLE))) == [FOUND]
    assert eng.scan_bytes(b"clean bytes").is_clean
    # clamd's own StreamMaxLength (1M here) is reported, not a crash
    big = eng.scan_bytes(os.urandom(2 << 20))
    assert [v.reason for v in big.not_scanned] == [NotScannedReason.TOO_LARGE]


def test_clamd_unavailable_is_not_scanned(tmp_path: Path) -> None:
    eng = Engine.load(clamd_socket=str(tmp_path / "missing.sock"), clamd_timeout=1)
    out = eng.scan_bytes(b"anything")
    assert [v.reason for v in out.not_scanned] == [NotScannedReason.ERROR]
    assert "unavailable" in out.not_scanned[0].detail


def test_parse_reply() -> None:
    assert parse_reply(b"stream: Eicar-Signature FOUND\x00").found == "Eicar-Signature"
    assert parse_reply(b"fd[10]: OK\x00").found == ""
    assert parse_reply(b"INSTREAM size limit exceeded. ERROR\x00").error


def test_hullguard_scan_with_clamd_configured(clamd_socket: str, tmp_path: Path) -> None:
    """`engine.clamd_socket` in the configuration reaches every scan worker: clamd's detection is
    journaled like any other, next to the built-in engine's verdict on the same tree."""
    import json
    import sys

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "sample.bin").write_bytes(SAMPLE)
    (tree / "clean.txt").write_text("harmless")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[engine]\nclamd_socket = "{clamd_socket}"\nclamd_timeout = 10.0\n')
    proc = subprocess.run([str(Path(sys.executable).parent / "hullguard"), "--config", str(cfg), "--state-dir",
                           str(tmp_path / "state"), "scan", "-q", "--format", "json", "--workers", "2", str(tree)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 50, proc.stderr
    (rec,) = json.loads(proc.stdout)["records"]
    assert (rec["object"], rec["detection"]) == (f"file://{tree}/sample.bin", FOUND)
    assert rec["info"].startswith(f"@NAME={FOUND}@TYPE=ClamAV")
