"""Deadlines: every permission event gets exactly one answer, on time, whatever the scanner does."""

from __future__ import annotations

import threading
import time

from hullguard.realtime.deadline import Pending, Watchdog


class Answers:
    def __init__(self) -> None:
        self.got: list[tuple[bool, float]] = []
        self.event = threading.Event()

    def __call__(self, allow: bool) -> None:
        self.got.append((allow, time.monotonic()))
        self.event.set()


def test_first_answer_wins_and_later_ones_are_noops() -> None:
    answers = Answers()
    p = Pending(answers, time.monotonic() + 10)
    assert p.answer(False)
    assert not p.answer(True)
    assert not p.expire(True)
    assert [a for a, _ in answers.got] == [False]
    assert not p.timed_out


def test_watchdog_answers_the_default_at_the_deadline() -> None:
    dog = Watchdog(default_allow=True)
    dog.start()
    try:
        answers = Answers()
        timeouts: list[Pending] = []
        start = time.monotonic()
        p = Pending(answers, start + 0.2, on_timeout=timeouts.append)
        dog.watch(p)
        assert answers.event.wait(3)
        allow, at = answers.got[0]
        assert allow is True
        assert 0.15 <= at - start < 1.0
        assert p.timed_out and timeouts == [p]
    finally:
        dog.stop()


def test_fail_closed_default_denies() -> None:
    dog = Watchdog(default_allow=False)
    dog.start()
    try:
        answers = Answers()
        dog.watch(Pending(answers, time.monotonic() + 0.05))
        assert answers.event.wait(3)
        assert answers.got[0][0] is False
    finally:
        dog.stop()


def test_an_earlier_deadline_added_later_is_not_delayed_by_a_later_one() -> None:
    dog = Watchdog()
    dog.start()
    try:
        late, early = Answers(), Answers()
        now = time.monotonic()
        dog.watch(Pending(late, now + 30))
        dog.watch(Pending(early, now + 0.1))
        assert early.event.wait(3)
        assert not late.got
    finally:
        dog.stop()
    assert late.got  # stop() answers whatever still waits


def test_answered_events_are_not_answered_again_by_the_watchdog() -> None:
    dog = Watchdog()
    dog.start()
    try:
        answers = Answers()
        p = Pending(answers, time.monotonic() + 0.1)
        dog.watch(p)
        p.answer(False)
        time.sleep(0.3)
        assert [a for a, _ in answers.got] == [False]
        assert len(dog) == 0
    finally:
        dog.stop()


def test_many_events_racing_answer_and_expiry_get_one_answer_each() -> None:
    dog = Watchdog()
    dog.start()
    try:
        answers = [Answers() for _ in range(300)]
        now = time.monotonic()
        pendings = [Pending(a, now + (i % 3) * 0.01) for i, a in enumerate(answers)]
        for p in pendings:
            dog.watch(p)
        for p in pendings[::2]:
            p.answer(True)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not all(a.got for a in answers):
            time.sleep(0.01)
        assert all(len(a.got) == 1 for a in answers)
    finally:
        dog.stop()
