"""The original goes only after the quarantined copy is on disk; every metadata field is kept."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from hullguard.response import quarantine as qmod
from hullguard.response.actions import Action
from hullguard.response.quarantine import QuarantineError, QuarantineSource, QuarantineStore


def _source(root: Path, rel: str, **kw: str) -> QuarantineSource:
    st = os.stat(root / rel, follow_symlinks=False)
    return QuarantineSource(root=os.fsencode(root), relpath=rel.encode(), expect=(st.st_dev, st.st_ino), **kw)


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def test_original_is_deleted_only_after_every_fsync(tmp_path: Path, eicar: bytes,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "e.com").write_bytes(eicar)
    store = QuarantineStore.for_state_dir(tmp_path / "state")
    events: list[str] = []
    real_fsync, real_delete = os.fsync, qmod.delete_in_root

    def fsync(fd: int) -> None:
        events.append("fsync " + _fd_path(fd))
        real_fsync(fd)

    def delete(root_: bytes, relpath: bytes, *, expect: tuple[int, int] | None = None) -> Action:
        events.append("delete")
        return real_delete(root_, relpath, expect=expect)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(qmod, "delete_in_root", delete)
    entry = store.quarantine(_source(root, "e.com"))
    qdir = str(store.directory)
    assert events[-1] == "delete" and events.count("delete") == 1
    before = events[:-1]
    tmp = f"{qdir}/.tmp-{entry.id}"
    for wanted in (f"{tmp}/data", f"{tmp}/meta.json", tmp, qdir):
        assert f"fsync {wanted}" in before, (wanted, events)
    # the entry's directory is synced, renamed into place, and the quarantine directory synced last
    assert before[-1] == f"fsync {qdir}" and before.index(f"fsync {tmp}") < len(before) - 1
    assert not (root / "e.com").exists()


@pytest.mark.parametrize("failing", ["data", "meta.json", "dir"])
def test_a_failed_fsync_keeps_the_original(tmp_path: Path, eicar: bytes, monkeypatch: pytest.MonkeyPatch,
                                           failing: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "e.com").write_bytes(eicar)
    store = QuarantineStore.for_state_dir(tmp_path / "state")
    store._ensure_dir()
    store._key(create=True)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = _fd_path(fd)
        hit = os.path.basename(path) == failing if failing != "dir" else os.path.basename(path).startswith(".tmp-")
        if hit:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(QuarantineError, match="original file was kept"):
        store.quarantine(_source(root, "e.com"))
    assert (root / "e.com").read_bytes() == eicar
    assert store.list() == []
    assert sorted(os.listdir(store.directory)) == ["key"]


def test_every_metadata_field_is_recorded(tmp_path: Path, eicar: bytes) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    f = root / "data" / "e.com"
    f.write_bytes(eicar)
    os.chmod(f, 0o4751 if os.getuid() == 0 else 0o751)
    os.utime(f, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = f.stat()
    store = QuarantineStore.for_state_dir(tmp_path / "state")
    uri = "docker://busybox:1.36@" + "c" * 64 + "/data/e.com"
    entry = store.quarantine(_source(
        root, "data/e.com", uri=uri, container_path="/data/e.com", detection="Eicar-Test-Signature",
        detection_type="Teststring", container_id="c" * 64, container_name="web", image="busybox:1.36",
        scope="volume", mount="volume web-data at /data"))
    on_disk = json.loads((store.directory / entry.id / "meta.json").read_text())
    expected = {
        "uri": uri, "root": str(root), "relpath": "data/e.com", "host_path": str(f),
        "uid": st.st_uid, "gid": st.st_gid, "mode": st.st_mode & 0o7777,
        "atime_ns": 1_500_000_000_123_456_789, "mtime_ns": 1_600_000_000_987_654_321,
        "sha1": hashlib.sha1(eicar).hexdigest().upper(), "size": len(eicar),
        "detection": "Eicar-Test-Signature", "detection_type": "Teststring", "container_id": "c" * 64,
        "container_name": "web", "image": "busybox:1.36", "container_path": "/data/e.com",
        "scope": "volume", "mount": "volume web-data at /data",
    }
    assert {k: on_disk[k] for k in expected} == expected
    assert store.get(entry.id) == entry
    restored = store.restore(entry.id)
    assert restored == os.fsencode(f)
    nst = f.stat()
    assert (nst.st_mode & 0o7777, nst.st_uid, nst.st_gid, nst.st_mtime_ns) == (
        st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns)


def test_directory_swapped_for_a_symlink_before_quarantine(tmp_path: Path, eicar: bytes) -> None:
    """Between the scan and the quarantine the file's directory becomes a link to a host directory
    holding a file of the same name: the host file is neither copied nor deleted."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "e.com").write_bytes(eicar)
    src = _source(root, "d/e.com")
    bait_dir = tmp_path / "host"
    bait_dir.mkdir()
    bait = bait_dir / "e.com"
    bait.write_bytes(eicar)
    (root / "d").rename(root / "d.real")
    (root / "d").symlink_to(bait_dir)
    store = QuarantineStore.for_state_dir(tmp_path / "state")
    with pytest.raises(QuarantineError):
        store.quarantine(src)
    assert bait.read_bytes() == eicar and (root / "d.real" / "e.com").read_bytes() == eicar
    assert store.list() == []
