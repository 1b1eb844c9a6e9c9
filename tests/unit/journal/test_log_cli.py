"""``hullguard log`` end to end: records put in through JournalStore, read through the CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from hullguard.cli.context import UserError
from hullguard.cli.main import app
from hullguard.journal.record import CSV_COLUMNS, DetectionRecord, Level, Module, RecordKind, ScanSession
from hullguard.journal.store import JournalStore

HULLGUARD = Path(sys.executable).parent / "hullguard"
CID = "0123456789abcdef" * 4
NOW = datetime.now(UTC)


@pytest.fixture
def env(tmp_path: Path) -> Path:
    """A state dir and an empty config file, so the machine's /etc/hullguard never leaks in."""
    (tmp_path / "config.toml").write_text("")
    return tmp_path


def run(env: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["--config", str(env / "config.toml"), "--state-dir", str(env / "state"), "log", *args],
        env={"COLUMNS": "250", "HULLGUARD_CONFIG": None, "HULLGUARD_STATE_DIR": None})


def run_main(env: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Through the installed entry point, so main()'s error handling (exit 100) is what runs."""
    return subprocess.run(
        [str(HULLGUARD), "--config", str(env / "config.toml"), "--state-dir", str(env / "state"), "log",
         *args], capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "250"})


@pytest.fixture
def journal(env: Path) -> Path:
    with JournalStore.open(env / "state" / "journal.db") as s:
        session = ScanSession(targets=["/tmp/t"], start=NOW - timedelta(days=3), user="root")
        s.start_session(session)
        s.add(DetectionRecord(
            module=Module.ON_DEMAND.value, object="file:///tmp/t/eicar.com", detection="Eicar",
            type="Test file", action="Cleaned by deleting", user="root", process="hullguard",
            event="On-demand scan.", sha1="3395856CE81F2B7382DEE72602F798B642F14140",
            info="@NAME=Eicar@TYPE=Teststring@SUSP=inf", time=NOW - timedelta(days=3),
            session_id=session.id))
        s.add(DetectionRecord(
            module=Module.REALTIME.value, object=f"docker://nginx:1@{CID}/srv/[bold]évil.com",
            detection="Eicar", type="Test file", action="Retained", container_id=CID,
            container_name="web", image="nginx:1", time=NOW - timedelta(hours=1)))
        s.add(DetectionRecord(
            module=Module.ON_DEMAND.value, object="file:///tmp/t/big.tar", kind=RecordKind.NOT_SCANNED,
            level=Level.WARNING.value, action="Not scanned", info="limit reached: max files",
            time=NOW - timedelta(days=3), session_id=session.id))
        s.add(DetectionRecord(module=Module.AGENT.value, object="file:///", kind=RecordKind.EVENT,
                              level=Level.INFO.value, event="Agent started.",
                              time=NOW - timedelta(minutes=5)))
        session.scanned, session.detections, session.cleaned, session.not_scanned = 12, 1, 1, 1
        session.exit_code = 10
        s.finish_session(session)
    return env


def objects_json(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [r["object"] for r in json.loads(result.stdout)]


def test_table_default_shows_detections_and_not_scanned(journal: Path) -> None:
    result = run(journal)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "eicar.com" in out and "big.tar" in out and "limit reached" in out
    assert "[bold]évil.com" in out  # printed literally, not taken as markup
    assert "Agent started" not in out  # events only with --kind event/all
    assert "Time (UTC)" in out and "Level" in out and "Container" in out and "web" in out
    assert "3 records" in out


def test_json_has_full_values(journal: Path) -> None:
    result = run(journal, "--format", "json")
    data = json.loads(result.stdout)
    assert [r["kind"] for r in data] == ["detection", "not_scanned", "detection"]
    assert data[0]["sha1"] == "3395856CE81F2B7382DEE72602F798B642F14140"
    assert data[2]["container_id"] == CID


def test_filters(journal: Path) -> None:
    assert objects_json(run(journal, "--since", "2h", "--format", "json")) == \
        [f"docker://nginx:1@{CID}/srv/[bold]évil.com"]
    since_iso = (NOW - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M")
    assert len(objects_json(run(journal, "--since", since_iso, "--format", "json"))) == 3
    assert objects_json(run(journal, "--module", "realtime", "--format", "json")) == \
        [f"docker://nginx:1@{CID}/srv/[bold]évil.com"]
    assert len(objects_json(run(journal, "--module", "On-demand scan", "--format", "json"))) == 2
    assert objects_json(run(journal, "--action", "Cleaned by deleting", "--format", "json")) == \
        ["file:///tmp/t/eicar.com"]
    assert objects_json(run(journal, "--action", "cleaned", "--format", "json")) == \
        ["file:///tmp/t/eicar.com"]
    assert objects_json(run(journal, "--action", "not-scanned", "--format", "json")) == \
        ["file:///tmp/t/big.tar"]
    for container in ("web", CID[:12], CID):
        assert len(objects_json(run(journal, "--container", container, "--format", "json"))) == 1
    assert objects_json(run(journal, "--container", "db", "--format", "json")) == []
    assert objects_json(run(journal, "--kind", "event", "--format", "json")) == ["file:///"]
    assert len(objects_json(run(journal, "--kind", "all", "--format", "json"))) == 4
    assert objects_json(run(journal, "--kind", "detection", "--limit", "1", "--format", "json")) == \
        [f"docker://nginx:1@{CID}/srv/[bold]évil.com"]


def test_csv_and_sarif_and_jsonl(journal: Path) -> None:
    result = run(journal, "--format", "csv", "--kind", "detection")
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 3
    assert rows[1][1:] == ["Error", "On-demand scan", "file:///tmp/t/eicar.com", "Eicar", "Test file",
                           "Cleaned by deleting", "root", "hullguard", "On-demand scan.",
                           "3395856CE81F2B7382DEE72602F798B642F14140", "@NAME=Eicar@TYPE=Teststring@SUSP=inf"]
    sarif = json.loads(run(journal, "--format", "SARIF").stdout)
    assert sarif["version"] == "2.1.0" and len(sarif["runs"][0]["results"]) == 3
    lines = run(journal, "--format", "jsonl").stdout.splitlines()
    assert len(lines) == 3 and all(json.loads(line)["object"] for line in lines)


def test_output_file(journal: Path) -> None:
    target = journal / "out.csv"
    result = run(journal, "--format", "csv", "--output", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    assert target.read_text(encoding="utf-8").startswith(",".join(CSV_COLUMNS) + "\n")
    table = journal / "out.txt"
    assert run(journal, "-o", str(table)).exit_code == 0
    assert "eicar.com" in table.read_text(encoding="utf-8")
    bad = run(journal, "--output", str(journal / "missing-dir" / "x.csv"))
    assert isinstance(bad.exception, UserError) and "cannot write" in str(bad.exception)


def test_scans(journal: Path) -> None:
    result = run(journal, "--scans")
    assert result.exit_code == 0, result.output
    assert "/tmp/t" in result.stdout and "1 scan" in result.stdout
    data = json.loads(run(journal, "--scans", "--format", "json").stdout)
    assert len(data) == 1
    assert (data[0]["targets"], data[0]["scanned"], data[0]["detections"], data[0]["cleaned"],
            data[0]["not_scanned"], data[0]["exit_code"]) == (["/tmp/t"], 12, 1, 1, 1, 10)
    rows = list(csv.reader(io.StringIO(run(journal, "--scans", "--format", "csv").stdout)))
    assert rows[0][0] == "ID" and rows[1][4] == "/tmp/t" and rows[1][10] == "10"
    assert json.loads(run(journal, "--scans", "--since", "1d", "--format", "json").stdout) == []


@pytest.mark.parametrize("columns", ["80", "250"])
def test_scans_table_has_every_column_at_any_width(journal: Path, columns: str) -> None:
    result = CliRunner().invoke(
        app, ["--config", str(journal / "config.toml"), "--state-dir", str(journal / "state"), "log", "--scans"],
        env={"COLUMNS": columns, "HULLGUARD_CONFIG": None, "HULLGUARD_STATE_DIR": None})
    assert result.exit_code == 0, result.output
    out = result.stdout
    for header in ("Start", "End", "Targets", "Scanned", "Detected", "Cleaned", "Not", "scanned", "Exit"):
        assert header in out, (header, out)
    (row,) = [line for line in out.splitlines() if line.split()[:1] == ["1"] and "scan" not in line]
    assert row.split()[-5:] == ["12", "1", "1", "1", "10"]  # scanned, detections, cleaned, not scanned, exit
    assert "running" not in out


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "--since"),
    (["--module", "antivirus"], "--module"),
    (["--action", "nuked"], "--action"),
    (["--kind", "virus"], "--kind"),
    (["--format", "xml"], "--format"),
    (["--limit", "0"], "--limit"),
    (["--limit", "ten"], "--limit"),
    (["--container", "/"], "--container"),
    (["--scans", "--format", "sarif"], "--format"),
    (["--scans", "--action", "cleaned"], "--action"),
])
def test_bad_filters_are_user_errors(journal: Path, args: list[str], message: str) -> None:
    result = run(journal, *args)
    assert isinstance(result.exception, UserError), result.output
    assert str(result.exception).startswith(message)
    assert "\n" not in str(result.exception)


def test_missing_journal_is_not_an_error(env: Path) -> None:
    result = run(env)
    assert result.exit_code == 0, result.output
    assert "No records yet" in result.stderr
    assert not (env / "state").exists()  # reading creates nothing
    assert json.loads(run(env, "--format", "json").stdout) == []
    assert json.loads(run(env, "--format", "sarif").stdout)["runs"][0]["results"] == []
    assert json.loads(run(env, "--scans", "--format", "json").stdout) == []


def test_empty_result_table(journal: Path) -> None:
    result = run(journal, "--container", "nothing-like-this")
    assert result.exit_code == 0 and "No matching records" in result.stdout


def test_entry_point_bad_since_is_one_line_exit_100(journal: Path) -> None:
    proc = run_main(journal, "--since", "yesterday")
    assert proc.returncode == 100
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hullguard: error: --since:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_entry_point_bad_limit_is_one_line_exit_100(journal: Path) -> None:
    proc = run_main(journal, "--limit", "x")
    assert proc.returncode == 100
    assert proc.stderr.strip() == "hullguard: error: --limit: expected a whole number >= 1, got 'x'"


def test_entry_point_corrupt_journal_is_one_line_exit_100(env: Path) -> None:
    (env / "state").mkdir()
    (env / "state" / "journal.db").write_bytes(b"garbage" * 1000)
    proc = run_main(env)
    assert proc.returncode == 100
    assert "not a readable SQLite database" in proc.stderr and "move it aside" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_entry_point_lists_records(journal: Path) -> None:
    proc = run_main(journal, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 4
