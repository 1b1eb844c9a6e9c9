"""Rule files: loading, overrides, exceptions, line-accurate errors, outputs; the default set."""

from __future__ import annotations

from pathlib import Path

import pytest

from hullguard.behavior.event import Event
from hullguard.behavior.ruleset import (
    DENY,
    RECORD,
    Priority,
    RuleError,
    load_rules,
    load_rules_text,
    render_output,
)

RULES = """\
- list: shells
  items: [sh, bash]
- macro: spawned
  condition: evt.type = execve
- rule: Shell
  desc: a shell
  condition: spawned and proc.name in shells
  output: "shell %proc.name in %container.name parent %proc.aname[1]"
  priority: warning
  tags: [shell]
  response: [deny]
  exceptions:
    - name: trusted image
      fields: [container.image, proc.pname]
      values:
        - [good:1, [runc, tini]]
    - name: single field
      fields: proc.cmdline
      comps: startswith
      values: [/opt/ok]
"""


def event(**kw: object) -> Event:
    fields: dict[str, object] = {"evt.type": "execve", "proc.name": "sh", "container.name": "web",
                                 "proc.aname": ("runc",), "proc.pname": "runc", "container.image": "x:1",
                                 "proc.cmdline": "sh -c id"}
    fields.update({k.replace("__", "."): v for k, v in kw.items()})
    return Event(fields)  # type: ignore[arg-type]


def test_load_and_match() -> None:
    rs = load_rules_text(RULES)
    rule = rs.get("Shell")
    assert rule is not None
    assert rule.priority is Priority.WARNING and rule.tags == ("shell",)
    assert rule.responses == (RECORD, DENY)
    assert rule.types == {"execve"}
    [m] = rs.evaluate(event())
    assert m.output == "shell sh in web parent runc"
    assert rs.evaluate(event(proc__name="zsh")) == []
    assert rs.evaluate(event(evt__type="open")) == []


def test_exceptions() -> None:
    rs = load_rules_text(RULES)
    assert rs.evaluate(event(container__image="good:1", proc__pname="tini")) == []
    assert rs.evaluate(event(container__image="good:1", proc__pname="cron")) != []
    assert rs.evaluate(event(proc__cmdline="/opt/ok/run")) == []


def test_override_in_later_file(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text(RULES)
    b.write_text("- list: shells\n  items: [zsh]\n  append: true\n"
                 "- rule: Shell\n  enabled: false\n")
    rs = load_rules([a, b])
    assert rs.lists["shells"] == ("sh", "bash", "zsh")
    assert rs.evaluate(event()) == []
    rs2 = load_rules([a]).with_responses({"Shell": ["record", "kill"]})
    assert rs2.get("Shell") is not None and rs2.get("Shell").responses == ("record", "kill")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown rule"):
        load_rules([a]).with_responses({"Nope": ["record"]})
    with pytest.raises(ValueError, match="unknown response"):
        load_rules([a]).with_responses({"Shell": ["explode"]})


@pytest.mark.parametrize(("text", "line", "column", "message"), [
    ("- rule: r\n  condition: >\n    evt.type = execve and\n    proc.nmae = sh\n", 4, 5, "unknown field"),
    ("- rule: r\n  condition: proc.name = sh\n  priority: LOUD\n", 3, 13, "unknown priority"),
    ("- rule: r\n  condition: proc.name = sh\n  respone: [kill]\n", 3, 3, "unknown key 'respone'"),
    ("- rule: r\n  condition: proc.name = sh\n  response: [explode]\n", 3, 13, "unknown response"),
    ("- rule: r\n  output: x\n", 1, 3, "has no 'condition'"),
    ("- macro: m\n  condition: proc.name in nolist\n", 2, 27, "needs a list"),
    ("- list: l\n  items: [a]\n  append: true\n", 1, 9, "not defined earlier"),
    ("- rule: r\n  condition: \"proc.name = sh\n", 3, 1, "invalid YAML"),
    ("rule: r\n", 1, 1, "a rule file is a YAML list"),
    ("- rule: r\n  condition: proc.name = sh\n  output: '%proc.nope'\n", 3, 11, "unknown field %proc.nope"),
    ("- rule: r\n  condition: x = 1\n", 2, 14, "unknown macro 'x'"),
    ("- rule: r\n  condition: proc.name = sh\n  exceptions:\n    - name: e\n      fields: [a.b]\n",
     5, 15, "unknown field 'a.b'"),
])
def test_errors_name_file_line_column(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(RuleError) as info:
        load_rules_text(text, "f.yaml")
    err = info.value
    assert message in err.reason
    assert (err.line, err.column) == (line, column), str(err)
    assert str(err).startswith(f"f.yaml:{line}:{column}: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="cannot read"):
        load_rules([tmp_path / "nope.yaml"])


def test_output_is_escaped_and_bounded() -> None:
    text = render_output("cmd=%proc.cmdline", Event({"proc.cmdline": "a\x1b[2J\n" + "b" * 5000}))
    assert "\x1b" not in text and "\n" not in text
    assert "\\x1b[2J\\x0a" in text
    assert len(text) < 1200 and text.endswith("...(+3982 chars)")


def test_default_rules_load_and_cover_the_issue() -> None:
    rs = load_rules([], include_default=True)
    names = {r.name for r in rs.rules}
    for expected in ("Terminal shell in container", "Shell spawned by a non-shell program",
                     "Drift - binary not from the image executed", "Execution from /tmp or /dev/shm",
                     "Write below binary directories or /etc", "Package manager run in container",
                     "Netcat or socat reverse shell", "Shell with stdin or stdout on a network socket",
                     "Crypto miner", "Read of /etc/shadow by a non-login program",
                     "Symlink created over a sensitive file", "Docker socket used from a container",
                     "Write to release_agent or core_pattern"):
        assert expected in names
    assert all(r.output for r in rs.rules)
