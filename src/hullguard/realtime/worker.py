"""The scan worker process: loads the engine once, scans the file descriptors it is sent.

Why processes and not threads: YARA-X holds the GIL while it scans (measured: two threads
scanning take the time of two sequential scans, and a ticking thread stalls for the whole
scan), so a long scan in a thread would also stall the thread that answers the kernel. A
worker never holds the fanotify fd (it is started by exec and the fd is close-on-exec), so when
the agent dies nothing keeps the group alive; the worker also asks the kernel to kill it when
its parent dies. Its pid is excluded from scanning by the monitor.

Protocol (``SOCK_SEQPACKET``, one message each way per job, pickles between two processes of
the same program): parent sends the pickled :class:`EngineConfig`; worker answers
``("ready", db_version, version)`` or ``("error", message)``; then per job the parent sends
``(job_id, size)`` with the file's fd attached (``SCM_RIGHTS``) and the worker answers
``(job_id, ScanOutcome)``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import signal
import socket
import sys
from typing import Any

from hullguard.engine.verdict import NotScannedReason, ScanOutcome, Verdict

PR_SET_PDEATHSIG = 1
MAX_MESSAGE = 1 << 20


def _die_with_parent() -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    lib.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _load_engine(config: Any) -> Any:
    from hullguard.engine.engine import Engine

    return Engine.from_config(config)


def serve(sock: socket.socket) -> int:
    data = sock.recv(MAX_MESSAGE)
    if not data:
        return 0
    try:
        engine = _load_engine(pickle.loads(data))
    except Exception as exc:
        sock.send(pickle.dumps(("error", f"{type(exc).__name__}: {exc}")))
        return 1
    sock.send(pickle.dumps(("ready", str(engine.db_version), str(engine.version))))
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
        except (ConnectionError, OSError):
            return 0
        if not msg:
            return 0
        job_id, size = pickle.loads(msg)
        outcome: ScanOutcome
        if not fds:
            outcome = ScanOutcome((Verdict.not_scanned(NotScannedReason.ERROR, "no file descriptor"),))
        else:
            try:
                outcome = engine.scan_fd(fds[0], size)
            except Exception as exc:  # the engine promises not to raise; never let one file kill us
                outcome = ScanOutcome((Verdict.not_scanned(NotScannedReason.ERROR, f"{exc}"),))
            finally:
                for fd in fds:
                    os.close(fd)
        sock.send(pickle.dumps((job_id, outcome)))


def main() -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent stops its workers itself
    sock = socket.socket(fileno=int(sys.argv[1]))
    if os.getppid() == 1:
        return 1
    try:
        return serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
