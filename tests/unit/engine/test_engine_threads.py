"""A rule set replaced while another thread still lives must not free that thread's scanner.

yara-x scanners are "unsendable": freed on a thread other than their own they are leaked with
an "Exception ignored" message. Reloads drop the old engine on whatever thread did the reload.
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any

from hullguard.engine.engine import Engine


def test_old_engine_dropped_on_another_thread_while_the_scanning_thread_lives() -> None:
    unraisable: list[Any] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        holder = [Engine.load()]
        scanned, go, done = threading.Event(), threading.Event(), threading.Event()

        def worker() -> None:
            holder[0].scan_bytes(b"x" * 100)
            scanned.set()
            go.wait(10)
            assert holder[0].scan_bytes(b"y" * 100).is_clean  # the new engine, and old scanners freed here
            done.set()

        t = threading.Thread(target=worker)
        t.start()
        assert scanned.wait(10)
        old = holder[0]
        holder[0] = Engine.load()  # a reload on this thread
        del old
        gc.collect()
        go.set()
        assert done.wait(10)
        t.join(10)
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert [str(u.exc_value) for u in unraisable] == []
