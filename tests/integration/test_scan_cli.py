"""`hullguard scan` end to end, as a user runs it: exit codes, formats, cleaning, bad input.

EICAR is written at run time by the ``eicar`` fixture; every test works in its own tmp_path
with its own state directory, and the one mount it makes is unmounted even on failure.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HULLGUARD = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hullguard"
EICAR_SHA1 = "3395856CE81F2B7382DEE72602F798B642F14140"


def run(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(HULLGUARD), "--state-dir", str(state), *args], capture_output=True,
                          text=True, errors="replace", timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "readme.txt").write_text("nothing to see")
    (root / "sub" / "data.bin").write_bytes(os.urandom(4096))
    return root


def test_clean_tree_exit_0(state: Path, tree: Path) -> None:
    proc = run(state, "scan", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert "Scanned 2 files" in proc.stdout


def test_threat_found_exit_50_and_retained(state: Path, tree: Path, eicar: bytes) -> None:
    (tree / "sub" / "eicar.com").write_bytes(eicar)
    proc = run(state, "scan", str(tree))
    assert proc.returncode == 50, proc.stderr
    assert "eicar.com" in proc.stdout and "Retained" in proc.stdout
    assert f"{tree}/sub/eicar.com" in proc.stderr  # plain progress line (stderr is not a terminal)
    assert (tree / "sub" / "eicar.com").exists()


def test_clean_exit_1_and_journal_csv(state: Path, tree: Path, eicar: bytes) -> None:
    victim = tree / "sub" / "eicar.com"
    victim.write_bytes(eicar)
    proc = run(state, "scan", "--clean", "--quiet", str(tree))
    assert proc.returncode == 1, proc.stderr
    assert not victim.exists()
    assert (tree / "readme.txt").exists()
    log = run(state, "log", "--format", "csv")
    assert log.returncode == 0, log.stderr
    rows = list(csv.DictReader(io.StringIO(log.stdout)))
    (row,) = [r for r in rows if r["Object"] == f"file://{victim}"]
    assert row["Action"] == "Cleaned by deleting"
    assert row["SHA1"] == EICAR_SHA1
    assert row["Module"] == "On-demand scan" and row["Level"] == "Error"
    assert row["Process"] == "hullguard" and row["Event"] == "On-demand scan."


def test_bad_target_exit_100_one_line(state: Path, tmp_path: Path) -> None:
    proc = run(state, "scan", str(tmp_path / "missing"))
    assert proc.returncode == 100
    assert proc.stderr.strip().count("\n") == 0
    assert "no such file or directory" in proc.stderr
    proc = run(state, "scan", "bogus:thing")
    assert proc.returncode == 100 and "unknown target type" in proc.stderr
    proc = run(state, "scan", "--max-size", "lots", str(tmp_path))
    assert proc.returncode == 100 and "not a size" in proc.stderr


def test_unscannable_archives_exit_10_and_scan_goes_on(state: Path, tree: Path, eicar: bytes) -> None:
    """Corrupt archive, zip bomb, 50 nested zips: reported, and the EICAR next to them is found."""
    bad = tree / "bad"
    bad.mkdir()
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.txt", b"hello" * 1000)
    (bad / "corrupt.zip").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (20 << 20))
    (bad / "bomb.zip").write_bytes(bomb.getvalue())
    data = b"harmless"
    for level in range(50):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"level{level}.zip" if level else "inner.txt", data)
        data = buf.getvalue()
    (bad / "nested.zip").write_bytes(data)
    (bad / "eicar.com").write_bytes(eicar)

    proc = run(state, "scan", "--format", "json", str(tree))
    assert proc.returncode == 50, proc.stderr  # EICAR left in place: threats win over not-scanned
    doc = json.loads(proc.stdout)
    infos = {r["object"].split("/bad/")[1].split("!")[0]: r["info"] for r in doc["records"]
             if r["kind"] == "not_scanned"}
    assert set(infos) == {"corrupt.zip", "bomb.zip", "nested.zip"}, infos
    assert "ratio" in infos["bomb.zip"] and "depth" in infos["nested.zip"]
    assert [r["sha1"] for r in doc["records"] if r["kind"] == "detection"] == [EICAR_SHA1]

    proc = run(state, "scan", "--clean", "--quiet", str(tree))
    assert proc.returncode == 10, proc.stderr  # threat cleaned, three objects not scanned
    assert not (bad / "eicar.com").exists() and (bad / "nested.zip").exists()


def test_formats_parse(state: Path, tree: Path, eicar: bytes) -> None:
    (tree / "eicar.com").write_bytes(eicar)
    with zipfile.ZipFile(tree / "a.zip", "w") as z:
        z.writestr("in/e.com", eicar)
    proc = run(state, "scan", "--quiet", "--format", "json", str(tree))
    assert proc.returncode == 50 and proc.stderr == ""
    doc = json.loads(proc.stdout)
    assert set(doc) == {"session", "records"}
    s = doc["session"]
    assert (s["scanned"], s["detections"], s["cleaned"], s["not_scanned"], s["exit_code"]) == (4, 2, 0, 0, 50)
    assert sorted(r["object"] for r in doc["records"]) == [f"file://{tree}/a.zip!/in/e.com",
                                                           f"file://{tree}/eicar.com"]
    proc = run(state, "scan", "--quiet", "--format", "csv", str(tree))
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0] == ["Time", "Level", "Module", "Object", "Detection", "Type", "Action", "User", "Process",
                       "Event", "SHA1", "Info"]
    assert len(rows) == 3 and all(r[10] == EICAR_SHA1 for r in rows[1:])
    proc = run(state, "scan", "--quiet", "--format", "sarif", str(tree))
    sarif = json.loads(proc.stdout)
    assert sarif["version"] == "2.1.0" and len(sarif["runs"][0]["results"]) == 2
    proc = run(state, "scan", "--format", "json", str(tree))  # not quiet: summary on stderr only
    json.loads(proc.stdout)
    assert "Scanned 4 files" in proc.stderr


def test_special_files_symlinks_and_odd_names(state: Path, tree: Path, eicar: bytes, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "eicar.com").write_bytes(eicar)
    (tree / "to-outside").symlink_to(outside)
    (tree / "to-eicar").symlink_to(outside / "eicar.com")
    (tree / "loop").symlink_to("loop")
    os.mkfifo(tree / "fifo")
    raw = os.fsencode(tree) + b"/bad-\xff\x1b[31m-name.com"
    with open(raw, "wb") as fh:
        fh.write(eicar)
    proc = run(state, "scan", "--clean", "--format", "json", "--quiet", str(tree), timeout=60)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    (rec,) = doc["records"]
    assert rec["object"] == f"file://{tree}/bad-\\xff\\x1b[31m-name.com"  # escaped, not raw bytes
    assert not os.path.lexists(raw)
    assert (outside / "eicar.com").exists()  # symlinks were not followed, nothing outside deleted
    assert doc["session"]["skipped"] == {"special file (FIFO, socket or device)": 1,
                                         "symbolic link (not followed)": 3}


def test_excludes_and_max_size(state: Path, tree: Path, eicar: bytes) -> None:
    (tree / "skip").mkdir()
    (tree / "skip" / "eicar.com").write_bytes(eicar)
    (tree / "eicar.log").write_bytes(eicar)
    (tree / "big.com").write_bytes(eicar + b" " * 0 + os.urandom(0))
    (tree / "big.bin").write_bytes(os.urandom(3 << 20))
    proc = run(state, "scan", "--quiet", "--format", "json", "--exclude", f"{tree}/skip",
               "--exclude", "*.log", "--exclude", "big.com", "--max-size", "1M", str(tree))
    assert proc.returncode == 0, proc.stdout
    doc = json.loads(proc.stdout)
    assert doc["session"]["skipped"] == {"excluded": 3, "larger than --max-size": 1}


@pytest.fixture
def tmpfs(tree: Path) -> Iterator[Path]:
    mnt = tree / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "hgtest", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_one_file_system(state: Path, tree: Path, tmpfs: Path, eicar: bytes) -> None:
    (tmpfs / "eicar.com").write_bytes(eicar)
    assert run(state, "scan", "--quiet", str(tree)).returncode == 50
    proc = run(state, "scan", "--quiet", "--format", "json", "--one-file-system", str(tree))
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["session"]["skipped"] == {"on another file system": 1}


def test_workers_and_help(state: Path, tree: Path, eicar: bytes) -> None:
    for i in range(30):
        (tree / f"f{i}.com").write_bytes(eicar if i % 7 == 0 else b"clean")
    for workers in ("1", "2"):
        proc = run(state, "scan", "--quiet", "--format", "json", "--workers", workers, str(tree))
        doc = json.loads(proc.stdout)
        assert doc["session"]["detections"] == 5 and doc["session"]["workers"] == int(workers)
    helptext = run(state, "scan", "--help").stdout
    assert "Exit codes" in helptext and "50" in helptext and "100" in helptext


def test_journal_session_counters(state: Path, tree: Path, eicar: bytes) -> None:
    (tree / "e.com").write_bytes(eicar)
    with gzip.open(tree / "e.gz", "wb") as fh:
        fh.write(eicar)
    run(state, "scan", "--quiet", "--clean", str(tree))
    proc = run(state, "log", "--scans", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    sessions = json.loads(proc.stdout)
    last = sessions[-1]
    assert (last["scanned"], last["detections"], last["cleaned"], last["exit_code"]) == (4, 2, 2, 1)


def test_usage_errors_exit_100_without_traceback(state: Path, tree: Path) -> None:
    for args in (["--workers", "-1"], ["--format", "xml"], ["--bogus"]):
        proc = run(state, "scan", *args, str(tree))
        assert proc.returncode == 100, (args, proc.stderr)
        assert "Error" in proc.stderr


def test_ctrl_c_stops_quickly_and_closes_the_session(state: Path) -> None:
    import signal
    import sqlite3
    import time

    proc = subprocess.Popen([str(HULLGUARD), "--state-dir", str(state), "scan", "-q", "--workers", "2", "/usr"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (state / "journal.db").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip() == "hullguard: scan interrupted"
    with sqlite3.connect(state / "journal.db") as db:
        ((exit_code, end),) = db.execute('SELECT exit_code, "end" FROM sessions').fetchall()
    assert exit_code == 130 and end
