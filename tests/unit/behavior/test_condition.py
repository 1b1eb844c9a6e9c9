"""The condition language: parsing, compiling, operator semantics, errors with offsets."""

from __future__ import annotations

import pytest

from hullguard.behavior import condition as cond
from hullguard.behavior.event import Event


def ev(**fields: object) -> Event:
    return Event({k.replace("__", "."): v for k, v in fields.items()})  # type: ignore[misc]


def check(text: str, event: Event, lists: dict[str, tuple[str, ...]] | None = None) -> bool:
    return cond.compile_node(cond.parse(text, {}, lists or {}))(event)


EXEC = {"evt.type": "execve", "proc.name": "sh", "proc.exe": "/tmp/x", "proc.tty": 34816,
        "proc.aname": ("runc", "containerd-shim"), "proc.argv": ("nc", "-e", "/bin/sh"),
        "proc.cmdline": "nc -e /bin/sh", "container.id": "ab" * 32, "proc.is_tty": True}


@pytest.mark.parametrize(("text", "expected"), [
    ("proc.name = sh", True),
    ("proc.name != sh", False),
    ("proc.name in (bash, sh)", True),
    ("proc.name in (bash, zsh)", False),
    ("proc.exe startswith /tmp/", True),
    ("proc.exe endswith /x", True),
    ("proc.exe glob '/t*/?'", True),
    ("proc.exe pmatch (/tmp)", True),
    ("proc.exe pmatch (/tm)", False),
    ("proc.cmdline contains '-e /bin'", True),
    ("proc.cmdline icontains 'NC -E'", True),
    ("proc.tty > 0 and proc.tty >= 34816 and proc.tty < 40000", True),
    ("proc.tty <= 1", False),
    ("proc.is_tty = true", True),
    ("proc.aname[1] = runc", True),
    ("proc.aname[2] = runc", False),
    ("proc.aname[9] = runc", False),
    ("proc.aname = containerd-shim", True),
    ("proc.argv in (-e, -c)", True),
    ("proc.argv[0] = nc", True),
    ("not proc.name = sh", False),
    ("proc.name = bash or (proc.name = sh and container.id != '')", True),
    ("proc.pname exists", False),
    ("proc.name exists", True),
    ("proc.pname = x or not proc.pname = x", True),  # a missing field: the comparison is false
    ("proc.pname != x", False),
    ("evt.type = 'execve'", True),
])
def test_operators(text: str, expected: bool) -> None:
    assert check(text, Event(dict(EXEC))) is expected


def test_lists_and_macros() -> None:
    lists = {"shells": ("sh", "bash")}
    macro = cond.parse("proc.name in shells", {}, lists)
    node = cond.parse("spawned and proc.is_tty = true", {"spawned": macro}, lists)
    assert cond.compile_node(node)(Event(dict(EXEC)))
    assert check("proc.name in (zsh, shells)", Event(dict(EXEC)), lists)


def test_event_types_index() -> None:
    assert cond.event_types(cond.parse("evt.type = execve and proc.name = sh")) == {"execve"}
    assert cond.event_types(cond.parse("evt.type in (open, create) or evt.type = write")) == \
        {"open", "create", "write"}
    assert cond.event_types(cond.parse("proc.name = sh")) is None
    assert cond.event_types(cond.parse("not evt.type = execve")) is None


@pytest.mark.parametrize(("text", "message", "offset"), [
    ("proc.nmae = sh", "unknown field 'proc.nmae'", 0),
    ("proc.name = sh and", "expected a field", 18),
    ("(proc.name = sh", "expected ')'", 15),
    ("proc.name sh", "expected an operator", 10),
    ("proc.tty = abc", "is a number", 0),
    ("proc.is_tty = maybe", "true or false", 0),
    ("proc.name in sh", "needs a list", 13),
    ("proc.name < 3", "needs a number field", 0),
    ("proc.tty contains 3", "text fields", 0),
    ("proc.name = 'sh", "unterminated string", 12),
    ("mystery", "unknown macro 'mystery'", 0),
    ("proc.name[2] = x", "takes no [index]", 0),
    ("", "empty condition", 0),
    ("proc.name = sh proc.exe = x", "unexpected 'proc.exe'", 15),
])
def test_errors(text: str, message: str, offset: int) -> None:
    with pytest.raises(cond.ConditionError) as info:
        cond.compile_node(cond.parse(text))
    assert message in str(info.value)
    assert info.value.offset == offset


def test_hostile_values_are_plain_data() -> None:
    nasty = "a\x1b[31m\nb" + "x" * 200_000
    event = Event({"evt.type": "execve", "proc.cmdline": nasty})
    assert check("proc.cmdline contains 'x'", event)
    assert check("proc.cmdline startswith 'a\x1b'", event)


def test_containers_only_is_conservative() -> None:
    from hullguard.behavior.condition import containers_only, parse

    macros = {"container": parse('container.id != ""')}
    yes = ['container and proc.name = sh', 'container.id = abc',
           'proc.name = a and (container or container.id in (x, y))',
           '(container and proc.name = a) or (container and proc.name = b)']
    no = ['proc.name = sh', 'not container', 'container or proc.name = sh', 'container.id = ""',
          'container.id in (a, "")', 'container.name != ""']
    assert all(containers_only(parse(t, macros)) for t in yes)
    assert not any(containers_only(parse(t, macros)) for t in no)
