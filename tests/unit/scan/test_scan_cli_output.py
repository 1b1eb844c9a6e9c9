"""`hullguard scan` through its entry point, unprivileged: what a person sees and the exit codes.

On a terminal stderr shows a live Rich status line (files, bytes, rate, detections); anywhere
else it gets one plain line per finding and no escape codes. The terminal is a real pty.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

HULLGUARD = Path(sys.executable).parent / "hullguard"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An empty config and a private state dir, so the machine's /etc/hullguard never leaks in."""
    (tmp_path / "config.toml").write_text("")
    return {"PATH": "/usr/bin:/bin", "HULLGUARD_CONFIG": str(tmp_path / "config.toml"),
            "HULLGUARD_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "120", "TERM": "xterm-256color"}


def tree_with_eicar(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for i in range(50):
        (root / "sub" / f"f{i}.txt").write_bytes(b"harmless %d\n" % i * 100)
    (root / "eicar.com").write_bytes(EICAR)
    return root


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(HULLGUARD), "scan", *args], capture_output=True, text=True,
                          errors="replace", env=env, timeout=120, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def test_terminal_gets_a_live_progress_display(tmp_path: Path, env: dict[str, str]) -> None:
    root = tree_with_eicar(tmp_path)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([str(HULLGUARD), "scan", "--workers", "1", str(root)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        shown = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=60)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 50
    text = shown.decode(errors="replace")
    assert "\x1b[" in text  # drawn with terminal control codes, not printed line by line
    assert "files" in text and "B/s" in text and "detections" in text  # the live status line
    assert f"file://{root}/eicar.com: Eicar (Test file): Retained" in text
    assert b"eicar.com" in out and b"Scanned 51 files" in out  # the result table on stdout


def test_not_a_terminal_gets_plain_lines(tmp_path: Path, env: dict[str, str]) -> None:
    root = tree_with_eicar(tmp_path)
    proc = run(env, str(root))
    assert proc.returncode == 50
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr
    assert proc.stderr.splitlines() == [f"file://{root}/eicar.com: Eicar (Test file): Retained"]
    proc = run(env, "--quiet", "--format", "csv", str(root))
    assert proc.stderr == "" and proc.stdout.startswith("Time,Level,Module,Object,")


def corrupt_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.txt", b"hello" * 1000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_exit_codes(tmp_path: Path, env: dict[str, str]) -> None:
    """0 clean, 10 something not scanned (nothing found), 50 threat left, 1 all cleaned, 100 error."""
    root = tmp_path / "t"
    root.mkdir()
    (root / "a.txt").write_text("harmless")
    assert run(env, "-q", str(root)).returncode == 0
    corrupt_zip(root / "broken.zip")
    proc = run(env, "-q", "--format", "json", str(root))
    assert proc.returncode == 10, proc.stdout
    (rec,) = json.loads(proc.stdout)["records"]
    assert rec["kind"] == "not_scanned" and rec["object"] == f"file://{root}/broken.zip"
    assert rec["info"].startswith("corrupt")
    (root / "broken.zip").unlink()
    (root / "eicar.com").write_bytes(EICAR)
    assert run(env, "-q", str(root)).returncode == 50
    assert run(env, "-q", "--clean", str(root)).returncode == 1
    assert not (root / "eicar.com").exists() and (root / "a.txt").exists()
    proc = run(env, str(tmp_path / "missing"))
    assert proc.returncode == 100 and proc.stderr.count("\n") == 1


def test_devices_are_skipped_not_opened(env: dict[str, str]) -> None:
    proc = run(env, "-q", "--format", "json", "/dev/null", "/dev/zero")
    assert proc.returncode == 0, proc.stderr
    session = json.loads(proc.stdout)["session"]
    assert session["scanned"] == 0
    assert session["skipped"] == {"special file (FIFO, socket or device)": 2}


def test_top_level_help_teaches(env: dict[str, str]) -> None:
    proc = subprocess.run([str(HULLGUARD), "--help"], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout and "hullguard scan /srv" in proc.stdout and "log --scans" in proc.stdout
    assert "--signatures DIR" in proc.stdout and "--state-dir DIR" in proc.stdout  # not <list[str]>
    scan_help = run(env, "--help").stdout
    assert "Exit codes" in scan_help and "Examples:" in scan_help
    for code in ("0", "1", "10", "50", "100"):
        assert any(line.strip().startswith(code + " ") for line in scan_help.splitlines()), code


def nested_zips(levels: int) -> bytes:
    data = b"harmless"
    for level in range(levels):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            z.writestr(f"level{level}.zip" if level else "inner.txt", data)
        data = buf.getvalue()
    return data


def zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", bytes(20 << 20))
    return buf.getvalue()


def test_bad_input_is_reported_and_the_scan_goes_on(tmp_path: Path, env: dict[str, str]) -> None:
    """Bad objects of every kind in one tree: exit 10, each reported, the clean rest scanned."""
    root = tmp_path / "bad"
    (root / "loop").mkdir(parents=True)
    corrupt_zip(root / "truncated.zip")
    (root / "bomb.zip").write_bytes(zip_bomb())
    (root / "nested.zip").write_bytes(nested_zips(50))
    (root / "loop" / "a").symlink_to("b")
    (root / "loop" / "b").symlink_to("a")
    (root / "loop" / "up").symlink_to("..")
    os.mkfifo(root / "fifo")
    with open(os.fsencode(root) + b"/name-\xff\xfe.txt", "wb") as fh:
        fh.write(b"harmless, but not UTF-8 named")
    unreadable = os.geteuid() != 0  # root reads mode-000 files
    if unreadable:
        (root / "locked.txt").write_text("x")
        (root / "locked.txt").chmod(0)
    proc = run(env, "--format", "json", str(root))
    assert proc.returncode == 10, proc.stderr
    doc = json.loads(proc.stdout)
    infos = {r["object"].removeprefix(f"file://{root}/").split("!/")[0]: r["info"] for r in doc["records"]}
    assert {k: v.split(":")[0] for k, v in infos.items()} == {
        "truncated.zip": "corrupt or truncated",
        "bomb.zip": "compression ratio limit reached",
        "nested.zip": "archive depth limit reached",
        **({"locked.txt": "unreadable"} if unreadable else {}),
    }
    session = doc["session"]
    assert session["scanned"] == 4  # the three archives and the oddly named file
    assert session["skipped"] == {"special file (FIFO, socket or device)": 1, "symbolic link (not followed)": 3}
    assert len(proc.stderr.splitlines()) == len(infos) + 1  # one line per outcome, then the summary


def test_detections_inside_archives_are_named_with_bang_slash(tmp_path: Path, env: dict[str, str]) -> None:
    import bz2
    import lzma

    srv = tmp_path / "srv"
    srv.mkdir()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("eicar.com", EICAR)
    with zipfile.ZipFile(srv / "a.zip", "w") as z:
        z.writestr("inner.zip", inner.getvalue())
    (srv / "b.com.bz2").write_bytes(bz2.compress(EICAR))
    (srv / "c.com.xz").write_bytes(lzma.compress(EICAR))
    proc = run(env, "-q", "--format", "json", str(srv))
    assert proc.returncode == 50
    assert sorted(r["object"] for r in json.loads(proc.stdout)["records"]) == [
        f"file://{srv}/a.zip!/inner.zip!/eicar.com", f"file://{srv}/b.com.bz2!/b.com", f"file://{srv}/c.com.xz!/c.com"]


def test_default_workers_are_one_per_core(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "f").write_text("x")
    proc = run(env, "-q", "--format", "json", str(tmp_path / "f"))
    assert json.loads(proc.stdout)["session"]["workers"] == len(os.sched_getaffinity(0))
