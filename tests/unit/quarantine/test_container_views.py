"""Container views from inspect data, private mounts from mountinfo, and confined opening (no Docker)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hullguard.objects import containers, safeopen
from hullguard.objects.containers import ContainerMount, MountKind, private_mounts, view_from_attrs
from hullguard.objects.scanobject import Scope

CID = "ab" * 32
ATTRS = {
    "Id": CID, "Name": "/web", "Image": "sha256:" + "cd" * 32, "Config": {"Image": "nginx"},
    "State": {"Running": True, "Pid": 4242},
    "GraphDriver": {"Name": "overlay2", "Data": {
        "LowerDir": "/var/lib/docker/overlay2/x-init/diff:/var/lib/docker/overlay2/l1/diff",
        "MergedDir": "/var/lib/docker/overlay2/x/merged", "UpperDir": "/var/lib/docker/overlay2/x/diff"}},
    "Mounts": [
        {"Type": "volume", "Name": "data", "Source": "/var/lib/docker/volumes/data/_data",
         "Destination": "/data", "RW": True},
        {"Type": "bind", "Source": "/srv/site", "Destination": "/usr/share/nginx/html", "RW": False},
        {"Type": "tmpfs", "Source": "", "Destination": "/run/secrets", "RW": True},
    ],
}
MOUNTINFO = b"""77 52 0:41 / / rw - overlay overlay rw,lowerdir=x
78 77 0:44 / /proc rw - proc proc rw
79 77 0:45 / /dev rw,nosuid - tmpfs tmpfs rw
80 79 0:46 / /dev/pts rw - devpts devpts rw
93 79 0:49 / /dev/shm rw - tmpfs shm rw
94 77 254:0 /var/lib/docker/volumes/data/_data /data rw - ext4 /dev/vda rw
95 77 0:50 / /scratch\\040dir rw - tmpfs tmpfs rw
96 77 254:0 /var/lib/docker/containers/x/hosts /etc/hosts rw - ext4 /dev/vda rw
97 77 254:0 /srv/site /usr/share/nginx/html ro - ext4 /dev/vda rw
57 78 0:51 / /proc/acpi ro - tmpfs tmpfs ro
60 81 0:52 / /sys/firmware ro - tmpfs tmpfs ro
98 77 0:53 / /run/secrets rw - tmpfs tmpfs rw
"""


def test_view_from_inspect() -> None:
    view = view_from_attrs(ATTRS, {"l1": "sha256:" + "ef" * 32})
    assert (view.id, view.name, view.image, view.running, view.pid) == (CID, "web", "nginx:latest", True, 4242)
    assert view.lower_dirs[1] == "/var/lib/docker/overlay2/l1/diff"
    kinds = [(m.kind, m.destination, m.read_only) for m in view.mounts]
    assert kinds == [(MountKind.VOLUME, "/data", False), (MountKind.BIND, "/usr/share/nginx/html", True)]
    assert view.mounts[0].scope is Scope.VOLUME and view.mounts[0].describe() == "volume data at /data"
    assert str(view.uri("/data/x")) == f"docker://nginx:latest@{CID}/data/x"


def test_private_mounts_are_what_the_host_cannot_reach() -> None:
    view = view_from_attrs(ATTRS)
    found = {m.destination: m for m in private_mounts(view, MOUNTINFO)}
    assert sorted(found) == ["/dev", "/dev/shm", "/run/secrets", "/scratch dir"]
    assert all(m.kind is MountKind.PRIVATE and m.scope is Scope.CONTAINER_PRIVATE for m in found.values())
    assert "only in the container's mount namespace" in found["/scratch dir"].describe()


def test_image_names_and_control_characters() -> None:
    assert containers.image_display("registry:5000/app", "") == "registry:5000/app:latest"
    assert containers.image_display("", "sha256:00") == "sha256:00"
    m = ContainerMount(MountKind.BIND, "/x\x1b[2J", "/src\n")
    assert "\x1b" not in m.describe() and "\n" not in m.describe()


def test_layer_ids(tmp_path: Path) -> None:
    layer = tmp_path / "image" / "overlay2" / "layerdb" / "sha256" / "chain1"
    layer.mkdir(parents=True)
    (layer / "cache-id").write_text("abc")
    (layer / "diff").write_text("sha256:123\n")
    (layer.parent / "broken").mkdir()
    assert containers.layer_ids(str(tmp_path)) == {"abc": "sha256:123"}
    assert containers.layer_ids(str(tmp_path / "none")) == {}


def test_open_beneath_stays_in_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("inside")
    host = tmp_path / "host-secret"
    host.write_text("outside")
    (root / "abs").symlink_to(host)
    (root / "dirlink").symlink_to(tmp_path)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        f = safeopen.open_beneath(fd, b"/sub/../sub/f")
        try:
            assert os.read(f, 100) == b"inside"
        finally:
            os.close(f)
        for bad in (b"abs", b"dirlink/host-secret"):
            with pytest.raises(OSError) as exc:
                safeopen.open_beneath(fd, bad)
            assert exc.value.errno in (errno.ELOOP, errno.EXDEV)
        if safeopen.have_openat2():  # ".." at the top stays at the root (RESOLVE_IN_ROOT)
            with pytest.raises(FileNotFoundError):
                safeopen.open_beneath(fd, b"../host-secret")
    finally:
        os.close(fd)


def test_pins_name_the_opened_directory(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_text("x")
    fd = containers.open_host_dir_nofollow(os.fsencode(d))
    pinned = containers._pin(fd, os.fsencode(d))
    try:
        os.rename(d, tmp_path / "moved")
        os.symlink("/etc", d)
        assert os.listdir(pinned) == [b"f"]
        assert containers.pinned_host_path(pinned) == os.fsencode(d)
        with pytest.raises(OSError):
            containers.open_host_dir_nofollow(os.fsencode(d))
    finally:
        containers.release_pins()
    assert containers.pinned_host_path(pinned) == pinned
