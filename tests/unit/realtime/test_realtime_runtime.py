"""Mount table parsing, Docker metadata shaping, the event follower's reconnects, context helpers."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hullguard.realtime.exclusions import Exclusions
from hullguard.runtime.docker import DockerEventFollower, image_display, info_from_attrs
from hullguard.runtime.mounts import parse_mountinfo
from hullguard.runtime.passwd import parse_passwd, read_in_root

MOUNTINFO = (
    "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "300 22 0:77 / /var/lib/docker/overlay2/abc/merged rw,relatime shared:150 - overlay overlay "
    "rw,lowerdir=/var/lib/docker/overlay2/l/X,upperdir=/var/lib/docker/overlay2/abc/diff\n"
    "301 22 0:78 / /mnt/with\\040space rw - tmpfs tmpfs rw\n"
    "broken line\n"
)


def test_parse_mountinfo() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == ["/", "/var/lib/docker/overlay2/abc/merged", "/mnt/with space"]
    overlay = mounts[1]
    assert overlay.fstype == "overlay"
    assert overlay.st_dev == os.makedev(0, 77)


def test_image_display_adds_latest_only_to_plain_names() -> None:
    assert image_display("busybox", "") == "busybox:latest"
    assert image_display("hullguard-test/busybox", "") == "hullguard-test/busybox:latest"
    assert image_display("localhost:5000/app", "") == "localhost:5000/app:latest"
    assert image_display("localhost:5000/app:1.2", "") == "localhost:5000/app:1.2"
    assert image_display("sha256:" + "a" * 64, "") == "sha256:" + "a" * 64
    assert image_display("app@sha256:" + "b" * 64, "") == "app@sha256:" + "b" * 64
    assert image_display("", "sha256:cc") == "sha256:cc"


def test_info_from_inspect_output() -> None:
    info = info_from_attrs({
        "Id": "f" * 64, "Name": "/web", "Image": "sha256:" + "1" * 64,
        "Config": {"Image": "nginx"}, "State": {"Pid": 42, "Running": True},
        "GraphDriver": {"Data": {"MergedDir": "/m", "UpperDir": "/u"}}})
    assert (info.name, info.image, info.merged_dir, info.upper_dir, info.pid, info.running) == \
        ("web", "nginx:latest", "/m", "/u", 42, True)
    empty = info_from_attrs({})
    assert empty.id == "" and empty.merged_dir == "" and not empty.running


class FlakyDaemon:
    """A stand-in Docker client: the first connection dies mid-stream, the second delivers."""

    def __init__(self) -> None:
        self.connects = 0

    def __call__(self) -> FlakyDaemon:
        self.connects += 1
        if self.connects == 2:
            raise ConnectionError("dockerd is restarting")
        return self

    def events(self, **kw: Any) -> Iterator[dict[str, Any]]:
        n = self.connects

        def gen() -> Iterator[dict[str, Any]]:
            yield {"Action": "start", "Actor": {"ID": f"c{n}", "Attributes": {"name": "x"}}}
            if n == 1:
                raise ConnectionError("connection reset")
            threading.Event().wait(30)
        return gen()

    def close(self) -> None:
        pass


def test_event_follower_reconnects_and_resyncs_after_daemon_restart() -> None:
    daemon = FlakyDaemon()
    seen: list[tuple[str, str]] = []
    resyncs: list[int] = []
    got_second = threading.Event()

    def on_event(action: str, cid: str, attrs: dict[str, Any]) -> None:
        seen.append((action, cid))
        if cid == "c3":
            got_second.set()

    follower = DockerEventFollower(on_event, lambda: resyncs.append(1), daemon,  # type: ignore[arg-type]
                                   max_backoff=0.05)
    follower.start()
    assert got_second.wait(10)
    follower._stop.set()
    assert seen[0] == ("start", "c1") and ("start", "c3") in seen
    assert len(resyncs) == 2  # once per successful connection
    assert follower.reconnects >= 2


def test_passwd_parsing() -> None:
    users = parse_passwd(b"root:x:0:0:root:/root:/bin/sh\nweird\napp:x:1000:1000::/:/bin/false\nbad:x:nan:1\n")
    assert users == {0: "root", 1000: "app"}


def test_read_in_root_never_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    secret = tmp_path / "host-passwd"
    secret.write_bytes(b"hostuser:x:0:0::/:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to(secret)
    assert read_in_root(str(root), "etc/passwd") is None
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").write_bytes(b"c:x:5:5::/:/bin/sh\n")
    assert read_in_root(str(root), "etc/passwd") == b"c:x:5:5::/:/bin/sh\n"
    assert read_in_root(str(root), "../host-passwd") is None
    # the root itself is the caller's trusted path and may be a (magic) link like /proc/PID/root
    (tmp_path / "root2").symlink_to(root, target_is_directory=True)
    assert read_in_root(str(tmp_path / "root2"), "etc/passwd") == b"c:x:5:5::/:/bin/sh\n"
    os.mkfifo(root / "etc" / "fifo")
    assert read_in_root(str(root), "etc/fifo") is None  # never blocks on a FIFO


def test_exclusions() -> None:
    ex = Exclusions(paths=("/var/lib/mysql/*",), processes=("/usr/sbin/mysqld",), users=("backup", "1234"),
                    containers=("db-*",), images=("postgres:*",))
    assert ex.path(b"/var/lib/mysql/ibdata1") and not ex.path(b"/var/lib/other")
    assert ex.process("/usr/sbin/mysqld") and not ex.process("")
    assert ex.user(1234, lambda: "x") and ex.user(7, lambda: "backup") and not ex.user(7, lambda: "root")
    assert not ex.user(None, lambda: "backup")
    assert ex.container("db-1", "") and ex.container("web", "postgres:16") and not ex.container("web", "nginx")
    assert Exclusions().empty and not ex.empty
