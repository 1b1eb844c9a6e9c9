"""Rule conditions: tokenize, parse into a small tree, compile once into Python closures.

Why a hand-written parser: the condition language is Falco's (fields, ``and/or/not``, the
operators below, macros and lists by name), which no Python library parses, and a
recursive-descent parser of forty lines gives exact error offsets, which a rule author needs
more than anything. Compiling to closures (not evaluating the tree) keeps the per-event cost to
a few Python calls: values are converted, lists turned into sets and globs into regexes once.

Grammar::

    expr    := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | "(" expr ")" | compare | MACRO
    compare := FIELD OP operand | FIELD "exists"
    operand := VALUE | LIST | "(" item ("," item)* ")"     item := VALUE | LIST
    OP      := = != < <= > >= in contains icontains startswith endswith glob pmatch
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hullguard.behavior.event import FIELDS, Event, FieldSpec, Value

Predicate = Callable[[Event], bool]

COMPARE_OPS = ("=", "!=", "<", "<=", ">", ">=")
WORD_OPS = ("in", "contains", "icontains", "startswith", "endswith", "glob", "pmatch")
LIST_OPS = ("in", "pmatch")
"""Operators whose operand is a set of values; the others take one value (or, for the string
matchers, a parenthesised list meaning "any of")."""


class ConditionError(ValueError):
    """A problem in a condition; ``offset`` is the character position in the condition text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<punct>\(|\)|,)
  | (?P<op>!=|<=|>=|=|<|>)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<word>[^\s(),="'<>!]+)
""", re.VERBOSE)


@dataclass(frozen=True)
class Token:
    kind: str
    """``punct``, ``op``, ``str`` (quoted), ``word``, or ``end``."""
    text: str
    offset: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch in "\"'":
                raise ConditionError("unterminated string", pos)
            raise ConditionError(f"unexpected character {ch!r}", pos)
        kind = m.lastgroup or ""
        if kind != "ws":
            raw = m.group()
            if kind == "str":
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            tokens.append(Token(kind, raw, pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# --- the tree -----------------------------------------------------------------------------
@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class Compare:
    field: str
    index: int | None
    op: str
    values: tuple[str, ...]
    many: bool
    """The operand was a list (parenthesised or a list name)."""
    offset: int


@dataclass(frozen=True)
class MacroRef:
    name: str
    node: Node


Node = And | Or | Not | Compare | MacroRef

_FIELD_RE = re.compile(r"^(?P<name>[a-z_]+\.[a-z_.]+)(?:\[(?P<index>\d+)\])?$")


class Parser:
    """Parses one condition; macros and lists are looked up in the given mappings."""

    def __init__(self, text: str, macros: Mapping[str, Node], lists: Mapping[str, tuple[str, ...]]) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.macros = macros
        self.lists = lists
        self.used_macros: set[str] = set()
        self.used_lists: set[str] = set()

    def parse(self) -> Node:
        if self._peek().kind == "end":
            raise ConditionError("empty condition", 0)
        node = self._or()
        tok = self._peek()
        if tok.kind != "end":
            raise ConditionError(f"unexpected {tok.text!r}; expected 'and', 'or' or the end", tok.offset)
        return node

    # helpers
    def _peek(self) -> Token:
        return self.tokens[self.pos]

    def _next(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind != "end":
            self.pos += 1
        return tok

    def _is_word(self, word: str) -> bool:
        tok = self._peek()
        return tok.kind == "word" and tok.text == word

    # grammar
    def _or(self) -> Node:
        items = [self._and()]
        while self._is_word("or"):
            self._next()
            items.append(self._and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def _and(self) -> Node:
        items = [self._unary()]
        while self._is_word("and"):
            self._next()
            items.append(self._unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def _unary(self) -> Node:
        tok = self._next()
        if tok.kind == "word" and tok.text == "not":
            return Not(self._unary())
        if tok.kind == "punct" and tok.text == "(":
            node = self._or()
            close = self._next()
            if close.text != ")" or close.kind != "punct":
                raise ConditionError(f"expected ')' to close the '(' at {tok.offset + 1}, "
                                     f"got {close.text or 'the end'!r}", close.offset)
            return node
        if tok.kind != "word" or tok.text in ("and", "or"):
            raise ConditionError(f"expected a field, a macro, 'not' or '(', got {tok.text or 'the end'!r}",
                                 tok.offset)
        m = _FIELD_RE.match(tok.text)
        if m is not None and m.group("name") in FIELDS:
            return self._compare(tok, m.group("name"), m.group("index"))
        if tok.text in self.macros:
            self.used_macros.add(tok.text)
            return MacroRef(tok.text, self.macros[tok.text])
        if m is not None:
            raise ConditionError(f"unknown field {m.group('name')!r}", tok.offset)
        raise ConditionError(f"unknown macro {tok.text!r}", tok.offset)

    def _compare(self, tok: Token, name: str, index_text: str | None) -> Compare:
        spec = FIELDS[name]
        index: int | None = None
        if index_text is not None:
            if not spec.indexable:
                raise ConditionError(f"field {name!r} takes no [index]", tok.offset)
            index = int(index_text)
            if index < 1 and name == "proc.aname":
                raise ConditionError("proc.aname[N] counts from 1 (the parent)", tok.offset)
        op_tok = self._next()
        if op_tok.kind == "word" and op_tok.text == "exists":
            return Compare(name, index, "exists", (), False, tok.offset)
        if not (op_tok.kind == "op" or (op_tok.kind == "word" and op_tok.text in WORD_OPS)):
            raise ConditionError(f"expected an operator after {tok.text!r} "
                                 f"({', '.join(COMPARE_OPS + WORD_OPS)}, exists), "
                                 f"got {op_tok.text or 'the end'!r}", op_tok.offset)
        values, many = self._operand(op_tok)
        return Compare(name, index, op_tok.text, values, many, tok.offset)

    def _operand(self, op_tok: Token) -> tuple[tuple[str, ...], bool]:
        tok = self._peek()
        if tok.kind == "punct" and tok.text == "(":
            self._next()
            values: list[str] = []
            if self._peek().text == ")" and self._peek().kind == "punct":
                self._next()
                return (), True
            while True:
                values.extend(self._item())
                sep = self._next()
                if sep.kind == "punct" and sep.text == ")":
                    return tuple(values), True
                if not (sep.kind == "punct" and sep.text == ","):
                    raise ConditionError(f"expected ',' or ')' in the list, got {sep.text or 'the end'!r}",
                                         sep.offset)
        if tok.kind == "word" and tok.text in self.lists:
            self._next()
            self.used_lists.add(tok.text)
            return self.lists[tok.text], True
        if op_tok.text == "in" and tok.kind == "word" and tok.text not in ("and", "or"):
            raise ConditionError(f"{op_tok.text!r} needs a list: '(a, b)' or a list name; "
                                     f"{tok.text!r} is not a known list", tok.offset)
        return self._item(), False

    def _item(self) -> tuple[str, ...]:
        tok = self._next()
        if tok.kind == "str":
            return (tok.text,)
        if tok.kind == "word" and tok.text not in ("and", "or", "not"):
            if tok.text in self.lists:
                self.used_lists.add(tok.text)
                return self.lists[tok.text]
            return (tok.text,)
        raise ConditionError(f"expected a value, got {tok.text or 'the end'!r}", tok.offset)


def parse(text: str, macros: Mapping[str, Node] | None = None,
          lists: Mapping[str, tuple[str, ...]] | None = None) -> Node:
    return Parser(text, macros or {}, lists or {}).parse()


# --- compiling ----------------------------------------------------------------------------
def compile_node(node: Node) -> Predicate:
    """A closure that evaluates ``node``; values are checked and converted here, once."""
    if isinstance(node, MacroRef):
        return compile_node(node.node)
    if isinstance(node, Not):
        inner = compile_node(node.item)
        return lambda ev: not inner(ev)
    if isinstance(node, And):
        parts = tuple(compile_node(n) for n in node.items)
        if len(parts) == 2:
            a, b = parts
            return lambda ev: a(ev) and b(ev)

        def all_of(ev: Event) -> bool:
            for p in parts:  # noqa: SIM110 - a loop is faster than all(genexpr)
                if not p(ev):
                    return False
            return True
        return all_of
    if isinstance(node, Or):
        parts = tuple(compile_node(n) for n in node.items)
        if len(parts) == 2:
            a, b = parts
            return lambda ev: a(ev) or b(ev)

        def any_of(ev: Event) -> bool:
            for p in parts:  # noqa: SIM110 - a loop is faster than any(genexpr)
                if p(ev):
                    return True
            return False
        return any_of
    return _compile_compare(node)


def _getter(c: Compare) -> Callable[[Event], Value]:
    name, index = c.field, c.index
    if index is None:
        return lambda ev: ev.get(name)
    pos = index - 1 if name == "proc.aname" else index

    def get_item(ev: Event) -> Value:
        seq = ev.get(name)
        if isinstance(seq, tuple) and 0 <= pos < len(seq):
            return seq[pos]
        return None
    return get_item


def _convert(spec: FieldSpec, text: str, c: Compare) -> str | int | bool:
    if spec.kind is int:
        try:
            return int(text, 0)
        except ValueError:
            raise ConditionError(f"{c.field} is a number; {text!r} is not", c.offset) from None
    if spec.kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ConditionError(f"{c.field} is true or false; {text!r} is neither", c.offset)
    return text


def _string_test(op: str, values: tuple[str, ...], c: Compare) -> Callable[[str], bool]:
    if op == "contains":
        return lambda s: any(v in s for v in values)
    if op == "icontains":
        low = tuple(v.lower() for v in values)
        return lambda s: any(v in s.lower() for v in low)
    if op == "startswith":
        return lambda s: s.startswith(values)
    if op == "endswith":
        return lambda s: s.endswith(values)
    if op == "glob":
        rx = re.compile("|".join(f"(?:{fnmatch.translate(v)})" for v in values), re.DOTALL)
        return lambda s: rx.match(s) is not None
    if op == "pmatch":
        dirs = tuple(v.rstrip("/") or "/" for v in values)
        exact = frozenset(dirs)
        prefixes = tuple(d if d == "/" else d + "/" for d in dirs)
        return lambda s: s in exact or s.startswith(prefixes)
    raise ConditionError(f"unknown operator {op!r}", c.offset)  # pragma: no cover - parser rejects


def _compile_compare(c: Compare) -> Predicate:
    spec = FIELDS[c.field]
    get = _getter(c)
    element_kind = str if (spec.kind is tuple) else spec.kind
    elementwise = spec.kind is tuple and c.index is None
    item_spec = FieldSpec(spec.name, element_kind, spec.doc)
    op = c.op

    if op == "exists":
        return lambda ev: get(ev) is not None
    if not c.values and op not in LIST_OPS:
        raise ConditionError(f"{op!r} needs a value", c.offset)
    if c.many and op in COMPARE_OPS:
        raise ConditionError(f"{op!r} compares with one value; use 'in' for a list", c.offset)

    test: Callable[[object], bool]
    if op in LIST_OPS and op == "in":
        allowed = frozenset(_convert(item_spec, v, c) for v in c.values)
        test = allowed.__contains__
    elif op in COMPARE_OPS:
        want = _convert(item_spec, c.values[0], c)
        if op in ("<", "<=", ">", ">=") and element_kind is not int:
            raise ConditionError(f"{op!r} needs a number field; {c.field} is not one", c.offset)
        test = _ordered(op, want)
    else:
        if element_kind is not str:
            raise ConditionError(f"{op!r} works on text fields; {c.field} is not one", c.offset)
        stest = _string_test(op, c.values, c)

        def test(v: object) -> bool:
            return isinstance(v, str) and stest(v)

    if elementwise:
        def any_element(ev: Event) -> bool:
            seq = get(ev)
            return isinstance(seq, tuple) and any(test(x) for x in seq)
        return any_element

    def one(ev: Event) -> bool:
        v = get(ev)
        return v is not None and test(v)
    return one


def _ordered(op: str, want: object) -> Callable[[object], bool]:
    if op == "=":
        return lambda v: v == want
    if op == "!=":
        return lambda v: v != want
    assert isinstance(want, int)
    if op == "<":
        return lambda v: isinstance(v, int) and v < want
    if op == "<=":
        return lambda v: isinstance(v, int) and v <= want
    if op == ">":
        return lambda v: isinstance(v, int) and v > want
    return lambda v: isinstance(v, int) and v >= want


def event_types(node: Node) -> frozenset[str] | None:
    """The ``evt.type`` values a condition can match, or None when it may match any.

    Lets the rule set evaluate, for each event, only the rules that can possibly match it.
    """
    if isinstance(node, MacroRef):
        return event_types(node.node)
    if isinstance(node, Compare):
        if node.field == "evt.type" and node.index is None and node.op in ("=", "in"):
            return frozenset(node.values)
        return None
    if isinstance(node, And):
        known = [t for t in (event_types(n) for n in node.items) if t is not None]
        if not known:
            return None
        result = known[0]
        for t in known[1:]:
            result &= t
        return result
    if isinstance(node, Or):
        parts = [event_types(n) for n in node.items]
        if any(p is None for p in parts):
            return None
        return frozenset().union(*(p for p in parts if p is not None))
    return None


def containers_only(node: Node) -> bool:
    """True when the condition can match only events of container processes or files.

    Conservative (False when unsure): true for ``container.id != ""`` (the ``container``
    macro) or ``container.id`` equal to given ids, anywhere in a conjunction, or in every
    branch of a disjunction. It lets real-time protection leave the host's executions to the
    kernel's verdict cache when no exec gate rule can match them.
    """
    if isinstance(node, MacroRef):
        return containers_only(node.node)
    if isinstance(node, Compare):
        if node.field != "container.id" or node.index is not None:
            return False
        if node.op == "!=" and node.values == ("",):
            return True
        return node.op in ("=", "in") and "" not in node.values and bool(node.values)
    if isinstance(node, And):
        return any(containers_only(n) for n in node.items)
    if isinstance(node, Or):
        return all(containers_only(n) for n in node.items)
    return False


def fields_used(node: Node) -> frozenset[str]:
    if isinstance(node, MacroRef):
        return fields_used(node.node)
    if isinstance(node, Compare):
        return frozenset((node.field,))
    if isinstance(node, Not):
        return fields_used(node.item)
    return frozenset().union(*(fields_used(n) for n in node.items))
