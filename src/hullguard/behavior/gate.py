"""The exec gate: the hook real-time protection calls on FAN_OPEN_EXEC_PERM, before a program runs.

Real-time protection owns the only permission-event group (one pipeline, one deadline); when it
gets ``FAN_OPEN_EXEC_PERM`` it asks :meth:`ExecGate.should_deny` and answers FAN_DENY when a rule
with the ``deny`` response matches. At that moment the kernel has not replaced the process image
yet: the new program is known by its path only (``proc.name`` is the path's base name,
``proc.cmdline`` is unknown), which is enough for path, name, drift and container rules. Rules
that need the command line match after the exec, where ``deny`` becomes a kill.

The gate also *records* (never denies) the matches of rules without ``deny`` whose fields are
all known here (:data:`GATE_FIELDS`: the executable's path, its layer, the container), such as
drift and execution from /tmp. Two kinds of execution are seen only here: a ``#!`` script, for
which the proc connector's ``proc.exe`` is the interpreter (only this permission event names
the script), and a program that exits before its ``/proc`` entry can be read. The same
execution then also reaches the proc connector path; :class:`GateRecords` remembers what the
gate recorded so that path skips it: one execution, one record.

A third kind is seen reliably only here: a program that *replaces itself* within microseconds
of starting, as ``nc host port -e /bin/sh`` does. By the time the proc connector's reader reads
nc's ``/proc`` entry it is often sh already. But when nc calls execve the kernel holds it in
FAN_OPEN_EXEC_PERM until the answer, with its old image (command line, open fds) intact, so the
gate evaluates the deny rules that need the command line on the *caller* (:data:`CALLER_SOURCE`)
and refuses its exec when one matches: the reverse shell never starts. Those caller records and
the proc connector's records of the same execution are deduplicated both ways.

The call is synchronous on the answering path (the context lane, never the reader thread), so
it evaluates only the rules that can match a path-only event, never talks to Docker beyond the
metadata cache's rate-limited miss, and never raises.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from hullguard.behavior.enrich import Enricher
from hullguard.behavior.event import EventType
from hullguard.behavior.respond import Responder
from hullguard.behavior.ruleset import DENY, Rule, RuleMatch, RuleSet
from hullguard.runtime.docker import ContainerInfo

log = logging.getLogger("hullguard.behavior.gate")

GATE_FIELDS = frozenset(("evt.type", "evt.source", "proc.exe", "proc.exe_upper_layer",
                         "container.id", "container.name", "container.image"))
"""Fields a gate event knows as well as the proc connector would: a rule that reads only these
gives the same answer here as after the exec, so recording it here loses nothing. ``proc.name``
is not one: through a symlink (busybox applets) the gate sees the target's name, the kernel's
comm is the link's."""


class GateRecords:
    """Executions the gate recorded, so the proc connector path does not record them again.

    Keyed by (pid, rule, executable): the pid stays the same across the exec, and the gate's
    answer comes before the exec completes, so the gate's entry always exists before the proc
    connector reports the exec. Counted (the same pid may exec the same file twice), bounded,
    and forgotten after ``ttl`` seconds (a script's entry is never claimed: its proc connector
    event names the interpreter).
    """

    def __init__(self, capacity: int = 4096, ttl: float = 30.0) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[int, str, str], tuple[float, int]] = OrderedDict()

    def add(self, pid: int, rule: str, exe: str) -> None:
        now = time.monotonic()
        key = (pid, rule, exe)
        with self._lock:
            _, count = self._seen.pop(key, (now, 0))
            self._seen[key] = (now, count + 1)
            while self._seen:
                first_key, (when, _) = next(iter(self._seen.items()))
                if len(self._seen) <= self._capacity and now - when < self._ttl:
                    break
                del self._seen[first_key]

    def claim(self, pid: int, rule: str, exe: str) -> bool:
        """True (once per recorded execution) when the gate recorded this match already."""
        key = (pid, rule, exe)
        with self._lock:
            hit = self._seen.get(key)
            if hit is None:
                return False
            when, count = hit
            if time.monotonic() - when >= self._ttl:
                del self._seen[key]
                return False
            if count <= 1:
                del self._seen[key]
            else:
                self._seen[key] = (when, count - 1)
            return True

    def __len__(self) -> int:
        return len(self._seen)


CALLER_SOURCE = "caller"
"""``evt.source`` of the event that describes the process calling execve, read while it waits."""


def gate_rules(rules: RuleSet) -> tuple[tuple[Rule, ...], tuple[Rule, ...], tuple[Rule, ...]]:
    """(deny rules, record-only rules the gate can decide, deny rules to ask of the caller)."""
    execve = rules.candidates(EventType.EXECVE)
    deny = tuple(r for r in execve if DENY in r.responses)
    record = tuple(r for r in execve if DENY not in r.responses and r.all_fields <= GATE_FIELDS)
    caller = tuple(r for r in deny if not r.all_fields <= GATE_FIELDS)
    return deny, record, caller


class ExecGate:
    def __init__(self, rules: Callable[[], RuleSet], enricher: Enricher, responder: Responder,
                 recorded: GateRecords | None = None) -> None:
        self._rules = rules
        self._enricher = enricher
        self._responder = responder
        self.recorded = recorded if recorded is not None else GateRecords()
        self.proc_recorded = GateRecords()
        """Matches the proc connector path journaled, so a caller match does not journal them again."""
        self._cache_for: RuleSet | None = None
        self._deny_rules: tuple[Rule, ...] = ()
        self._record_rules: tuple[Rule, ...] = ()
        self._caller_rules: tuple[Rule, ...] = ()
        self._needs_host = True
        self.asked = 0
        self.denied = 0
        self.callers_denied = 0
        self.records = 0
        self.errors = 0

    def _sets(self) -> tuple[RuleSet, tuple[Rule, ...], tuple[Rule, ...], tuple[Rule, ...]]:
        rs = self._rules()
        if rs is not self._cache_for:
            self._deny_rules, self._record_rules, self._caller_rules = gate_rules(rs)
            self._needs_host = not all(r.containers_only for r in self._deny_rules + self._record_rules)
            self._cache_for = rs
        return rs, self._deny_rules, self._record_rules, self._caller_rules

    def needs_host(self) -> bool:
        """Whether any gate rule can match an execution on the host (the default rules cannot).

        When none can, real-time protection answers host executions from its verdict cache and
        lets the kernel's ignore marks skip them, as it does with behaviour monitoring off.
        """
        try:
            self._sets()
        except Exception:
            log.exception("behaviour exec gate rules failed; asking for host executions")
            return True
        return self._needs_host

    def should_deny(self, pid: int, path: str | bytes, container: ContainerInfo | str | None) -> RuleMatch | None:
        """The matching deny rule for ``pid`` about to execute ``path`` (inside its container), or None.

        ``container`` is the container whose filesystem holds the file (its info or id); None or
        "" for the host. A deny match is journaled here (action Blocked) and the caller answers
        FAN_DENY; matches of record-only path rules are journaled (their own responses) and the
        execution is allowed.
        """
        self.asked += 1
        try:
            rs, deny, record, caller_rules = self._sets()
            if not deny and not record:
                return None
            cid = container.id if isinstance(container, ContainerInfo) else (container or "")
            text = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
            event = self._enricher.gate_event(pid, text, cid)
            if deny:
                matches = rs.evaluate(event, only=deny)
                if matches:
                    self.denied += 1
                    self._responder.respond(matches[0], denied=True)
                    return matches[0]
            if caller_rules and cid:
                caller = self._caller_match(rs, caller_rules, pid, cid)
                if caller is not None:
                    return caller
            if record:
                for match in rs.evaluate(event, only=record):
                    self.records += 1
                    self.recorded.add(pid, match.name, text)
                    self._responder.respond(match)
            return None
        except Exception:
            self.errors += 1
            log.exception("behaviour exec gate failed; allowing")
            return None

    def _caller_match(self, rs: RuleSet, rules: tuple[Rule, ...], pid: int, cid: str) -> RuleMatch | None:
        """A deny rule matching the process that calls execve (``nc -e sh``), read while it waits.

        Only container processes are asked (as the proc connector path does by default). The
        read is one small file when the reader's entry is current (same command line), else the
        whole ``/proc`` entry: the process cannot change under us, it is waiting for our answer.
        """
        info = self._enricher.table.frozen_caller(pid, cid)
        if info is None or info.container_id != cid:
            return None
        event = self._enricher.exec_event(info, source=CALLER_SOURCE)
        matches = rs.evaluate(event, only=rules)
        if not matches:
            return None
        match = matches[0]
        self.denied += 1
        self.callers_denied += 1
        if self.proc_recorded.claim(pid, match.name, info.exe):
            return match  # journaled by the proc connector path already (its kill may be on the way)
        self.recorded.add(pid, match.name, info.exe)
        self._responder.respond(match, denied=True)
        return match
