"""Rule files: YAML lists, macros and rules, loaded with line-accurate errors, compiled once.

A rule file is a YAML sequence; each item is one of::

    - list: shell_binaries          - macro: container              - rule: Terminal shell in container
      items: [sh, bash]               condition: container.id != ""   desc: ...
      append: false                                                   condition: ...
                                                                      output: "shell %proc.name ..."
                                                                      priority: WARNING
                                                                      tags: [container, shell]
                                                                      response: [record, deny]
                                                                      exceptions: [...]
                                                                      enabled: true

The file is composed into YAML nodes (not plain data) so every error can name the file, line
and column of the offending item: a typo in a condition points at the word, not at the rule.
Later files override earlier ones: a list with ``append: true`` is extended, a rule of the same
name is replaced, and a rule item with only ``rule`` plus ``enabled``/``response``/``priority``
changes the existing rule (how a site turns a default rule off or makes it stricter).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hullguard.behavior import condition as cond
from hullguard.behavior.event import FIELDS, Event, Value
from hullguard.objects.uri import escape_text


class RuleError(ValueError):
    """An invalid rule file; the message starts with ``FILE:LINE:COL:``."""

    def __init__(self, source: str, line: int, column: int, message: str) -> None:
        # one line, whatever the message quotes (a folded multi-line condition, a YAML excerpt)
        message = re.sub(r"\s*\n\s*", " ", message.strip())
        where = f"{source}:{line}:{column}" if line > 0 else source  # line 0: the file as a whole
        super().__init__(f"{where}: {message}")
        self.source, self.line, self.column, self.reason = source, line, column, message


class Priority(IntEnum):
    """Falco's priorities, most severe first (lower value = more severe)."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFORMATIONAL = 6
    DEBUG = 7

    @classmethod
    def parse(cls, text: str) -> Priority:
        name = text.strip().upper()
        if name == "INFO":
            name = "INFORMATIONAL"
        return cls[name]


RECORD, DENY, KILL, PAUSE, STOP = "record", "deny", "kill", "pause", "stop"
RESPONSES = (RECORD, DENY, KILL, PAUSE, STOP)


@dataclass(frozen=True)
class Exception_:
    name: str
    predicate: cond.Predicate
    fields: frozenset[str] = frozenset()
    """The fields the exception compares (the exec gate must know them all to trust a match)."""


@dataclass(frozen=True)
class Rule:
    name: str
    condition: str
    predicate: cond.Predicate
    priority: Priority = Priority.WARNING
    desc: str = ""
    output: str = ""
    tags: tuple[str, ...] = ()
    responses: tuple[str, ...] = (RECORD,)
    enabled: bool = True
    exceptions: tuple[Exception_, ...] = ()
    types: frozenset[str] | None = None
    """The event types the condition can match (None: any)."""
    fields: frozenset[str] = frozenset()
    source: str = ""
    """``FILE:LINE`` where the rule is defined."""
    containers_only: bool = False
    """The condition can match container events only (:func:`condition.containers_only`)."""

    @property
    def all_fields(self) -> frozenset[str]:
        """Every field the rule reads: its condition's and its exceptions'."""
        return self.fields.union(*(e.fields for e in self.exceptions))

    def matches(self, event: Event) -> bool:
        if not self.predicate(event):
            return False
        return not any(e.predicate(event) for e in self.exceptions)

    def render(self, event: Event) -> str:
        return render_output(self.output or self.name, event)


@dataclass(frozen=True)
class RuleMatch:
    rule: Rule
    event: Event
    output: str

    @property
    def name(self) -> str:
        return self.rule.name


_OUTPUT_FIELD = re.compile(r"%([a-z_]+\.[a-z_.]+)(?:\[(\d+)\])?")
MAX_VALUE_TEXT = 1024


def format_value(value: Value) -> str:
    """A field value as text for outputs and records: escaped and bounded (command lines are hostile)."""
    if value is None:
        return "<NA>"
    if isinstance(value, tuple):
        text = ",".join(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    if len(text) > MAX_VALUE_TEXT:
        text = text[:MAX_VALUE_TEXT] + f"...(+{len(text) - MAX_VALUE_TEXT} chars)"
    return escape_text(text)


def render_output(template: str, event: Event) -> str:
    def sub(m: re.Match[str]) -> str:
        value = event.get(m.group(1))
        if m.group(2) is not None and isinstance(value, tuple):
            i = int(m.group(2)) - (1 if m.group(1) == "proc.aname" else 0)
            value = value[i] if 0 <= i < len(value) else None
        return format_value(value)
    return _OUTPUT_FIELD.sub(sub, template)


@dataclass
class RuleSet:
    """The compiled rules, indexed by event type so an event meets only the rules it can match."""

    rules: tuple[Rule, ...] = ()
    lists: dict[str, tuple[str, ...]] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    _by_type: dict[str, tuple[Rule, ...]] = field(default_factory=dict, repr=False)
    _any: tuple[Rule, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        active = [r for r in self.rules if r.enabled]
        self._any = tuple(r for r in active if r.types is None)
        types = {t for r in active if r.types for t in r.types}
        self._by_type = {t: tuple(r for r in active if r.types is None or t in r.types) for t in types}

    def candidates(self, event_type: str) -> tuple[Rule, ...]:
        return self._by_type.get(event_type, self._any)

    def evaluate(self, event: Event, only: Iterable[Rule] | None = None) -> list[RuleMatch]:
        matches: list[RuleMatch] = []
        for rule in (only if only is not None else self.candidates(event.type)):
            if rule.matches(event):
                matches.append(RuleMatch(rule, event, rule.render(event)))
        return matches

    def get(self, name: str) -> Rule | None:
        for r in self.rules:
            if r.name == name:
                return r
        return None

    def with_responses(self, overrides: Mapping[str, Sequence[str]]) -> RuleSet:
        """The same rules with some responses replaced (the configuration's per-rule overrides)."""
        unknown = set(overrides) - {r.name for r in self.rules}
        if unknown:
            raise ValueError(f"response override for unknown rule(s): {', '.join(sorted(unknown))}")
        for name, resp in overrides.items():
            bad = [x for x in resp if x not in RESPONSES]
            if bad:
                raise ValueError(f"rule {name!r}: unknown response {bad[0]!r} (use {', '.join(RESPONSES)})")
        rules = tuple(replace(r, responses=tuple(overrides[r.name])) if r.name in overrides else r
                      for r in self.rules)
        return RuleSet(rules, dict(self.lists), dict(self.macros), self.sources)


def default_rules_path() -> Path:
    """The default rule set shipped inside the package."""
    return Path(str(resources.files("hullguard.behavior") / "rules" / "default.yaml"))


# --- loading ------------------------------------------------------------------------------
_LIST_KEYS = {"list", "items", "append"}
_MACRO_KEYS = {"macro", "condition"}
_RULE_KEYS = {"rule", "desc", "condition", "output", "priority", "tags", "response", "enabled",
              "exceptions"}
_EXCEPTION_KEYS = {"name", "fields", "comps", "values"}


class _Loader:
    def __init__(self) -> None:
        self.lists: dict[str, tuple[str, ...]] = {}
        self.macro_nodes: dict[str, cond.Node] = {}
        self.macro_texts: dict[str, str] = {}
        self.rules: dict[str, Rule] = {}
        self.source = ""
        self.text = ""

    # errors
    def error(self, node: Node, message: str) -> RuleError:
        return RuleError(self.source, node.start_mark.line + 1, node.start_mark.column + 1, message)

    def cond_error(self, node: ScalarNode, text: str, exc: cond.ConditionError) -> RuleError:
        """Map a character offset in the condition back to the line and column in the file."""
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        raw_start, raw_end = node.start_mark.index, node.end_mark.index
        raw = self.text[raw_start:raw_end]
        word = text[exc.offset:].split(None, 1)[0] if text[exc.offset:].strip() else ""
        if word:
            nth = text[:exc.offset].count(word)
            pos = -1
            for _ in range(nth + 1):
                pos = raw.find(word, pos + 1)
                if pos < 0:
                    break
            if pos >= 0:
                absolute = raw_start + pos
                line = self.text.count("\n", 0, absolute) + 1
                col = absolute - (self.text.rfind("\n", 0, absolute) + 1) + 1
        elif node.end_mark:
            line, col = node.end_mark.line + 1, node.end_mark.column + 1
        return RuleError(self.source, line, col, f"{exc} in condition {text.strip()[:80]!r}")

    # node helpers
    def scalar(self, node: Node, what: str) -> str:
        if not isinstance(node, ScalarNode):
            raise self.error(node, f"{what}: expected a text value")
        return str(node.value)

    def strings(self, node: Node, what: str) -> tuple[str, ...]:
        if isinstance(node, ScalarNode):
            return (str(node.value),) if node.value != "" else ()
        if not isinstance(node, SequenceNode):
            raise self.error(node, f"{what}: expected a list")
        return tuple(self.scalar(n, what) for n in node.value)

    def boolean(self, node: Node, what: str) -> bool:
        text = self.scalar(node, what).lower()
        if text in ("true", "yes", "on"):
            return True
        if text in ("false", "no", "off"):
            return False
        raise self.error(node, f"{what}: expected true or false, got {text!r}")

    def mapping(self, node: MappingNode, allowed: set[str], kind: str) -> dict[str, tuple[Node, Node]]:
        out: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, "key")
            if key not in allowed:
                raise self.error(key_node, f"unknown key {key!r} in a {kind} "
                                           f"(allowed: {', '.join(sorted(allowed))})")
            if key in out:
                raise self.error(key_node, f"duplicate key {key!r}")
            out[key] = (key_node, value_node)
        return out

    def parse_condition(self, node: Node, what: str) -> tuple[str, cond.Node]:
        text = self.scalar(node, what)
        assert isinstance(node, ScalarNode)
        try:
            tree = cond.parse(text, self.macro_nodes, self.lists)
            cond.compile_node(tree)  # surfaces value errors (a number field compared with text) now
        except cond.ConditionError as exc:
            raise self.cond_error(node, text, exc) from None
        return text, tree

    # items
    def load(self, text: str, source: str) -> None:
        self.source, self.text = source, text
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise RuleError(source, line, col, f"invalid YAML: {exc.problem or exc}") from None
        except yaml.reader.ReaderError as exc:  # a character YAML does not allow, at an offset
            before = text[:exc.position]
            line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
            ch = exc.character
            code = ch if isinstance(ch, int) else ord(ch)
            raise RuleError(source, line, col, f"invalid YAML: character \\x{code:02x} is not allowed "
                                               "(control characters must be written as escapes)") from None
        except yaml.YAMLError as exc:
            raise RuleError(source, 1, 1, f"invalid YAML: {exc}") from None
        if root is None:
            return
        if not isinstance(root, SequenceNode):
            raise self.error(root, "a rule file is a YAML list of '- list:', '- macro:' and '- rule:' items")
        for item in root.value:
            if not isinstance(item, MappingNode):
                raise self.error(item, "expected a '- list:', '- macro:' or '- rule:' item")
            keys = {self.scalar(k, "key") for k, _ in item.value}
            if "list" in keys:
                self.load_list(item)
            elif "macro" in keys:
                self.load_macro(item)
            elif "rule" in keys:
                self.load_rule(item)
            else:
                raise self.error(item, "expected one of the keys 'list', 'macro' or 'rule'")

    def load_list(self, item: MappingNode) -> None:
        m = self.mapping(item, _LIST_KEYS, "list")
        name_node = m["list"][1]
        name = self.scalar(name_node, "list")
        if "items" not in m:
            raise self.error(item, f"list {name!r} has no 'items'")
        values: list[str] = []
        for v in self.strings(m["items"][1], f"list {name!r} items"):
            values.extend(self.lists.get(v, (v,)))  # a list may include another list by name
        append = "append" in m and self.boolean(m["append"][1], "append")
        if append:
            if name not in self.lists:
                raise self.error(name_node, f"append to list {name!r}, which is not defined earlier")
            values = list(self.lists[name]) + values
        self.lists[name] = tuple(dict.fromkeys(values))

    def load_macro(self, item: MappingNode) -> None:
        m = self.mapping(item, _MACRO_KEYS, "macro")
        name_node = m["macro"][1]
        name = self.scalar(name_node, "macro")
        if name in FIELDS or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is None:
            raise self.error(name_node, f"macro name {name!r} must be a word (letters, digits, _) "
                                        "and not a field name")
        if "condition" not in m:
            raise self.error(item, f"macro {name!r} has no 'condition'")
        text, tree = self.parse_condition(m["condition"][1], f"macro {name!r} condition")
        self.macro_nodes[name] = tree
        self.macro_texts[name] = text

    def load_rule(self, item: MappingNode) -> None:
        m = self.mapping(item, _RULE_KEYS, "rule")
        name_node = m["rule"][1]
        name = self.scalar(name_node, "rule").strip()
        if not name:
            raise self.error(name_node, "a rule needs a name")
        location = f"{self.source}:{name_node.start_mark.line + 1}"
        if "condition" not in m:
            existing = self.rules.get(name)
            if existing is None:
                raise self.error(item, f"rule {name!r} has no 'condition' (and no earlier rule of "
                                       "that name to change)")
            changes = set(m) - {"rule", "enabled", "response", "priority", "tags"}
            if changes:
                raise self.error(item, f"changing rule {name!r} without a condition may only set "
                                       "enabled, response, priority or tags "
                                       f"(not {', '.join(sorted(changes))})")
            self.rules[name] = replace(existing, **self.rule_options(m, existing))
            return
        text, tree = self.parse_condition(m["condition"][1], f"rule {name!r} condition")
        base = Rule(name=name, condition=text, predicate=cond.compile_node(tree),
                    types=cond.event_types(tree), fields=cond.fields_used(tree), source=location,
                    containers_only=cond.containers_only(tree))
        options = self.rule_options(m, base)
        if "output" in m:
            output_node = m["output"][1]
            output = self.scalar(output_node, "output").strip()
            for fm in _OUTPUT_FIELD.finditer(output):
                if fm.group(1) not in FIELDS:
                    raise self.error(output_node, f"output of rule {name!r}: unknown field %{fm.group(1)}")
            options["output"] = output
        if "desc" in m:
            options["desc"] = self.scalar(m["desc"][1], "desc").strip()
        if "exceptions" in m:
            options["exceptions"] = self.exceptions(m["exceptions"][1], name)
        self.rules.pop(name, None)  # a redefinition moves to the end, like a new rule
        self.rules[name] = replace(base, **options)

    def rule_options(self, m: dict[str, tuple[Node, Node]], rule: Rule) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if "priority" in m:
            node = m["priority"][1]
            try:
                options["priority"] = Priority.parse(self.scalar(node, "priority"))
            except KeyError:
                raise self.error(node, f"unknown priority {node.value!r} "
                                       f"(use {', '.join(p.name for p in Priority)})") from None
        if "tags" in m:
            options["tags"] = self.strings(m["tags"][1], "tags")
        if "enabled" in m:
            options["enabled"] = self.boolean(m["enabled"][1], "enabled")
        if "response" in m:
            node = m["response"][1]
            responses = self.strings(node, "response")
            for r in responses:
                if r not in RESPONSES:
                    raise self.error(node, f"rule {rule.name!r}: unknown response {r!r} "
                                           f"(use {', '.join(RESPONSES)})")
            options["responses"] = tuple(dict.fromkeys((RECORD, *responses)))
        return options

    def exceptions(self, node: Node, rule_name: str) -> tuple[Exception_, ...]:
        """Falco-style exceptions: ``fields`` and ``comps`` name the columns, each ``values``
        entry is one row (one item per field; an item may be a list, for ``in``)."""
        if not isinstance(node, SequenceNode):
            raise self.error(node, f"rule {rule_name!r}: exceptions must be a list")
        out: list[Exception_] = []
        for item in node.value:
            if not isinstance(item, MappingNode):
                raise self.error(item, "an exception is a mapping with name, fields, comps, values")
            m = self.mapping(item, _EXCEPTION_KEYS, "exception")
            if "name" not in m or "fields" not in m:
                raise self.error(item, "an exception needs 'name' and 'fields'")
            ex_name = self.scalar(m["name"][1], "exception name")
            fields_node = m["fields"][1]
            single = isinstance(fields_node, ScalarNode)
            names = self.strings(fields_node, "exception fields")
            specs = []
            for f in names:
                fm = re.fullmatch(r"([a-z_]+\.[a-z_.]+)(?:\[(\d+)\])?", f)
                if fm is None or fm.group(1) not in FIELDS:
                    raise self.error(fields_node, f"exception {ex_name!r}: unknown field {f!r}")
                specs.append((fm.group(1), int(fm.group(2)) if fm.group(2) else None))
            comps = self.strings(m["comps"][1], "comps") if "comps" in m else ("=",) * len(names)
            if len(comps) != len(names):
                raise self.error(m["comps"][1], f"exception {ex_name!r}: comps needs one operator per field")
            for op in comps:
                if op not in cond.COMPARE_OPS + cond.WORD_OPS:
                    raise self.error(m["comps"][1], f"exception {ex_name!r}: unknown operator {op!r}")
            rows: list[cond.Node] = []
            vnode = m["values"][1] if "values" in m else None
            if vnode is not None and not isinstance(vnode, SequenceNode):
                raise self.error(vnode, f"exception {ex_name!r}: values must be a list")
            for row in (vnode.value if vnode is not None else []):
                cells: list[Node] = [row] if single else list(row.value) if isinstance(row, SequenceNode) \
                    else []
                if len(cells) != len(names):
                    raise self.error(row, f"exception {ex_name!r}: each row of values needs "
                                          f"{len(names)} items (one per field)")
                parts: list[cond.Node] = []
                for (fname, index), op, cell in zip(specs, comps, cells, strict=True):
                    values: list[str] = []
                    for v in self.strings(cell, "exception value"):
                        values.extend(self.lists.get(v, (v,)))
                    many = len(values) != 1 or op in cond.LIST_OPS
                    if many and op == "=":
                        op = "in"
                    parts.append(cond.Compare(fname, index, op, tuple(values), many, 0))
                rows.append(parts[0] if len(parts) == 1 else cond.And(tuple(parts)))
            if not rows:
                continue
            tree: cond.Node = rows[0] if len(rows) == 1 else cond.Or(tuple(rows))
            try:
                out.append(Exception_(ex_name, cond.compile_node(tree), frozenset(f for f, _ in specs)))
            except cond.ConditionError as exc:
                raise self.error(item, f"exception {ex_name!r}: {exc}") from None
        return tuple(out)


def load_rules(paths: Sequence[str | Path], *, include_default: bool = False) -> RuleSet:
    """Load and compile rule files in order (later files override earlier ones).

    Raises :class:`RuleError` (a ``ValueError``) naming the file, line and column.
    """
    loader = _Loader()
    sources: list[str] = []
    all_paths = ([default_rules_path()] if include_default else []) + [Path(p) for p in paths]
    for path in all_paths:
        text = _read_rule_file(path)
        loader.load(text, str(path))
        sources.append(str(path))
    return RuleSet(tuple(loader.rules.values()), loader.lists, loader.macro_texts, tuple(sources))


MAX_RULE_FILE = 4 << 20


def _read_rule_file(path: Path) -> str:
    """The file's text; a FIFO, a device (``/dev/zero``) or a huge file is refused, never read
    forever: the agent reads rule files on its start and reload paths."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RuleError(str(path), 0, 0, "not a regular file")
            data = f.read(MAX_RULE_FILE + 1)
    except OSError as exc:
        raise RuleError(str(path), 0, 0, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_RULE_FILE:
        raise RuleError(str(path), 0, 0, f"larger than {MAX_RULE_FILE >> 20} MiB; is this a rule file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RuleError(str(path), 0, 0, "not UTF-8 text") from None


def load_rules_text(text: str, source: str = "<rules>") -> RuleSet:
    loader = _Loader()
    loader.load(text, source)
    return RuleSet(tuple(loader.rules.values()), loader.lists, loader.macro_texts, (source,))
