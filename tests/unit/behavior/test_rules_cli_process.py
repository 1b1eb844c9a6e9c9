"""``hullguard rules check|test`` through the installed entry point: exit codes, one-line errors
with FILE:LINE:COL, inputs that must not hang, hostile values escaped in the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HULLGUARD = Path(sys.executable).parent / "hullguard"

GOOD = """\
- rule: Shell
  condition: evt.type = execve and proc.name = sh
  output: "shell %proc.cmdline"
  priority: WARNING
"""


def hullguard(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.touch()
    return subprocess.run([str(HULLGUARD), "--config", str(config), "--state-dir", str(tmp_path / "state"),
                           *args], capture_output=True, text=True, timeout=60)


def one_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 100, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hullguard: error: ")
    return lines[0].removeprefix("hullguard: error: ")


def test_check_good_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    res = hullguard(tmp_path, "rules", "check", str(good))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("OK: 1 rule(s) from 1 file(s); 14 rule(s)")
    res = hullguard(tmp_path, "rules", "check", "--no-default", str(good))
    assert res.returncode == 0 and res.stdout.startswith("OK: 1 rule(s) from 1 file(s); 1 rule(s)")


@pytest.mark.parametrize(("text", "where", "says"), [
    ("- list: l\n  items: [a]\n- rule: R\n  condition: evt.type = execve and proc.nmae = sh\n  output: x\n"
     "  priority: WARNING\n", ":4:36:", "unknown field 'proc.nmae'"),
    ("- rule: R\n  condition: evt.type = execve\n  output: x\n  priority: LOUD\n", ":4:13:", "unknown priority 'LOUD'"),
    ("- rule: R\n  condition: >\n    evt.type = execve and\n    proc.tty = abc\n  output: x\n  priority: INFO\n",
     ":4:5:", "proc.tty is a number"),  # line and column inside a folded condition
    ("- rule: R\n  condition: [evt.type = execve\n", ":3:1:", "invalid YAML"),
    ("- rule: R\n  condition: evt.type = execve and proc.cmdline contains \"a\x01b\"\n", ":2:60:",
     "character \\x01 is not allowed"),
    ("- rule: R\n  condition: evt.type = execve\n  respone: [kill]\n", ":3:3:", "respone"),
])
def test_check_errors_are_one_line_with_file_line_column(tmp_path: Path, text: str, where: str, says: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    error = one_error(hullguard(tmp_path, "rules", "check", str(bad)))
    assert error.startswith(f"{bad}{where} "), error
    assert says in error


def test_check_refuses_what_is_not_a_rule_file_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert one_error(hullguard(tmp_path, "rules", "check", str(fifo))) == f"{fifo}: not a regular file"
    assert one_error(hullguard(tmp_path, "rules", "check", "/dev/zero")) == "/dev/zero: not a regular file"
    missing = tmp_path / "missing.yaml"
    assert one_error(hullguard(tmp_path, "rules", "check", str(missing))) == \
        f"{missing}: cannot read: No such file or directory"
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (5 << 20))
    assert "larger than 4 MiB" in one_error(hullguard(tmp_path, "rules", "check", str(huge)))


def test_rules_test_replays_and_escapes_hostile_values(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    events = tmp_path / "events.jsonl"
    events.write_text('{"evt.type": "execve", "proc.name": "sh", "proc.cmdline": "sh \\u001b[2J\\u0007\\r' +
                      "A" * 5000 + '"}\n'
                      '# a comment\n\n{"evt.type": "execve", "proc.name": "ls", "proc.cmdline": "ls"}\n')
    res = hullguard(tmp_path, "rules", "test", "--events", str(events), "--rules", str(good), "--no-default")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[-1] == "2 event(s), 1 match(es)"
    [match] = lines[:-1]
    assert match.startswith(f"{events}:1: Shell [WARNING] (record): shell sh \\x1b[2J\\x07\\x0d")
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\r" not in res.stdout
    assert len(match) < 1200  # values are cut at 1024 characters in outputs


@pytest.mark.parametrize(("line", "says"), [
    ("not json", "invalid JSON"),
    ('{"proc.name": "sh"}', "the event has no evt.type"),
    ('{"evt.type": "execve", "proc.nmae": "sh"}', "unknown field 'proc.nmae'"),
    ('{"evt.type": "execve", "proc.tty": "x"}', "proc.tty: expected an integer"),
])
def test_rules_test_bad_events_name_their_line(tmp_path: Path, line: str, says: str) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"evt.type": "execve", "proc.name": "ls"}\n' + line + "\n")
    error = one_error(hullguard(tmp_path, "rules", "test", "--events", str(events)))
    assert error.startswith(f"{events}:2: ") and says in error, error
