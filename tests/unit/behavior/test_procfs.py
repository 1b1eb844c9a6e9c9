"""/proc parsing: hostile comm and command lines, and a real read of our own process."""

from __future__ import annotations

import os
from pathlib import Path

from hullguard.behavior import procfs
from hullguard.runtime.passwd import parse_passwd, read_in_root


def test_parse_stat_with_hostile_comm() -> None:
    data = b"42 (a) b) (c) S 7 42 42 34816 42 0 0 0 0 0 0 0 0 0 20 0 1 0 999 0 0"
    assert procfs.parse_stat(data) == ("a) b) (c", 7, 34816, 999)
    assert procfs.parse_stat(b"garbage") is None


def test_parse_cmdline_keeps_undecodable_bytes() -> None:
    argv = procfs.parse_cmdline(b"nc\0-e\0/bin/\xff\x1bsh\0")
    assert argv == ("nc", "-e", "/bin/\udcff\x1bsh")
    assert procfs.parse_cmdline(b"") == ()


def test_parse_status() -> None:
    assert procfs.parse_status(b"Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nNSpid:\t5000\t7\n") == (1000, 7)


def test_busybox_reexec_name() -> None:
    info = procfs.ProcInfo(1, 0, 0, "exe", "/bin/busybox", ("sleep", "1"), 0, -1, 0, 1, "")
    assert info.name == "sleep"
    assert procfs.ProcInfo(1, 0, 0, "sh", "/bin/busybox", ("x",), 0, -1, 0, 1, "").name == "sh"


def test_read_own_process_and_table() -> None:
    info = procfs.read_process(os.getpid(), "")
    assert info is not None and info.pid == os.getpid() and info.exe
    table = procfs.ProcessTable(capacity=2)
    assert table.get(os.getpid()) is not None
    assert table.get(2**22 + 12345) is None  # no such process: nothing, no error
    ancestors = table.ancestors(info)
    assert ancestors and ancestors[0].pid == os.getppid()


def test_lstat_in_never_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "link").symlink_to("/etc")
    assert procfs.lstat_in(str(tmp_path), "/real/f") is not None
    assert procfs.lstat_in(str(tmp_path), "/link/passwd") is None
    assert procfs.lstat_in(str(tmp_path), "/real/../real/f") is None
    assert read_in_root(str(tmp_path), "real/f") == b"x"
    assert read_in_root(str(tmp_path), "link/passwd") is None


def test_upper_layer_and_whiteouts(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "x").write_text("x")
    assert procfs.in_upper_layer(str(tmp_path), "/tmp/x") is True
    assert procfs.in_upper_layer(str(tmp_path), "/bin/sh") is False
    assert procfs.in_upper_layer("", "/tmp/x") is None


def test_fd_type_of_own_fds() -> None:
    r, w = os.pipe()
    try:
        assert procfs.fd_type(os.getpid(), r) == "pipe"
        assert procfs.fd_type(os.getpid(), 987654) == ""
    finally:
        os.close(r)
        os.close(w)


def test_parse_passwd() -> None:
    assert parse_passwd(b"root:x:0:0::/:/bin/sh\nbad\napp:x:1000:1000::/:/bin/sh\n") == \
        {0: "root", 1000: "app"}


def test_table_sees_an_exec_under_the_same_pid_before_the_reader_does() -> None:
    """``sh -c '...; exec sleep'`` keeps its pid and start time; the comm tells the exec, so a
    file event enriched before the reader handled that exec names the new program."""
    import subprocess
    import time

    from hullguard.behavior.procfs import ProcessTable

    proc = subprocess.Popen(["/bin/sh", "-c", "read _; exec sleep 30"], stdin=subprocess.PIPE)
    try:
        table = ProcessTable()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"/bin/sh"):
            time.sleep(0.01)
        first = table.on_exec(proc.pid, "")
        assert first is not None and first.comm == "sh"
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        while time.monotonic() < deadline and Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
            time.sleep(0.01)
        now = table.get(proc.pid)
        assert now is not None and now.comm == "sleep" and now.argv == ("sleep", "30") and now.start == first.start
    finally:
        proc.kill()
        proc.wait()
