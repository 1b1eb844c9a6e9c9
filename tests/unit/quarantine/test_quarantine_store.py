"""The quarantine store on plain directories: durable store, exact restore, refusals, corruption."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import zipfile
from pathlib import Path

import pytest

from hullguard.journal.record import Module
from hullguard.journal.store import JournalStore
from hullguard.response import quarantine as qmod
from hullguard.response.quarantine import (
    BrokenEntry,
    QuarantineCorrupt,
    QuarantineEntry,
    QuarantineError,
    QuarantineNotFound,
    QuarantineSource,
    QuarantineStore,
)


@pytest.fixture
def store(tmp_path: Path) -> QuarantineStore:
    return QuarantineStore.for_state_dir(tmp_path / "state")


@pytest.fixture
def victim_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    return root


def _plant(root: Path, rel: str, data: bytes, mode: int = 0o640, mtime: int = 1_600_000_000) -> Path:
    path = root / rel
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(1_500_000_000_123_456_789, mtime * 10**9 + 987_654_321))
    return path


def _source(root: Path, rel: str, **kw: str) -> QuarantineSource:
    st = os.stat(root / rel, follow_symlinks=False)
    return QuarantineSource(root=os.fsencode(root), relpath=rel.encode(), expect=(st.st_dev, st.st_ino),
                            uri=f"file://{root}/{rel}", detection="Eicar test file", detection_type="test",
                            **kw)


def test_quarantine_stores_encrypted_and_removes_original(store: QuarantineStore, victim_root: Path,
                                                         eicar: bytes) -> None:
    path = _plant(victim_root, "sub/eicar.com", eicar)
    entry = store.quarantine(_source(victim_root, "sub/eicar.com", container_id="c" * 64,
                                     container_name="web", image="busybox:latest"))
    assert not path.exists()
    assert entry.sha1 == hashlib.sha1(eicar).hexdigest().upper()
    assert entry.size == len(eicar) and entry.mode == 0o640
    assert entry.mtime_ns == 1_600_000_000_987_654_321
    assert entry.host_path == str(path) and entry.container_name == "web"
    data = (store.directory / entry.id / "data").read_bytes()
    assert eicar not in data and b"EICAR" not in data
    assert stat.S_IMODE((store.directory / "key").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert [e.id for e in store.list() if isinstance(e, QuarantineEntry)] == [entry.id]
    assert b"".join(store.content(entry.id)) == eicar
    assert not [n for n in os.listdir(store.directory) if n.startswith(".")]


def test_restore_is_byte_exact_with_mode_owner_and_times(store: QuarantineStore, victim_root: Path) -> None:
    payload = os.urandom(3 * qmod.CHUNK + 12345)  # several chunks and a short final one
    path = _plant(victim_root, "sub/blob.bin", payload, mode=0o751)
    st = path.stat()
    entry = store.quarantine(_source(victim_root, "sub/blob.bin"))
    assert not path.exists()
    restored = store.restore(entry.id)
    assert restored == os.fsencode(path)
    assert path.read_bytes() == payload
    nst = path.stat()
    assert stat.S_IMODE(nst.st_mode) == 0o751
    assert (nst.st_uid, nst.st_gid) == (st.st_uid, st.st_gid)
    assert nst.st_mtime_ns == st.st_mtime_ns
    assert store.list() == []  # restored entries leave the store


def test_exact_chunk_multiple_and_empty_file(store: QuarantineStore, victim_root: Path) -> None:
    for rel, payload in (("sub/exact", os.urandom(2 * qmod.CHUNK)), ("sub/empty", b"")):
        path = _plant(victim_root, rel, payload)
        entry = store.quarantine(_source(victim_root, rel))
        store.restore(entry.id)
        assert path.read_bytes() == payload


def test_restore_never_replaces_and_to_path(store: QuarantineStore, victim_root: Path, tmp_path: Path,
                                            eicar: bytes) -> None:
    path = _plant(victim_root, "sub/eicar.com", eicar)
    entry = store.quarantine(_source(victim_root, "sub/eicar.com"))
    path.write_bytes(b"new file in its place")
    with pytest.raises(QuarantineError, match="already exists"):
        store.restore(entry.id)
    assert path.read_bytes() == b"new file in its place"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert store.restore(entry.id, out_dir, keep=True) == os.fsencode(out_dir / "eicar.com")
    assert (out_dir / "eicar.com").read_bytes() == eicar
    assert store.restore(entry.id, out_dir / "renamed") == os.fsencode(out_dir / "renamed")
    assert (out_dir / "renamed").read_bytes() == eicar


def test_restore_into_a_symlinked_directory_is_refused(store: QuarantineStore, victim_root: Path,
                                                      tmp_path: Path, eicar: bytes) -> None:
    _plant(victim_root, "sub/eicar.com", eicar)
    entry = store.quarantine(_source(victim_root, "sub/eicar.com"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (victim_root / "sub").rmdir()
    (victim_root / "sub").symlink_to(elsewhere)
    with pytest.raises(QuarantineError, match="cannot be opened safely"):
        store.restore(entry.id)
    assert os.listdir(elsewhere) == []
    assert [e.id for e in store.list()] == [entry.id]  # the entry is kept


def test_refusals_keep_the_original(store: QuarantineStore, victim_root: Path, tmp_path: Path,
                                    eicar: bytes) -> None:
    bait = _plant(tmp_path, "bait", eicar)
    # a symlink in the root pointing at a host file
    (victim_root / "sub" / "link").symlink_to(bait)
    with pytest.raises(QuarantineError):
        store.quarantine(QuarantineSource(os.fsencode(victim_root), b"sub/link"))
    # a hard link to the bait
    os.link(bait, victim_root / "sub" / "hard")
    with pytest.raises(QuarantineError, match="hard-linked"):
        store.quarantine(_source(victim_root, "sub/hard"))
    assert bait.read_bytes() == eicar and (victim_root / "sub" / "hard").exists()
    # a path climbing out of the root
    with pytest.raises(QuarantineError, match="below the scan root"):
        store.quarantine(QuarantineSource(os.fsencode(victim_root), b"../bait"))
    # a different inode than the one scanned
    path = _plant(victim_root, "sub/swapped", eicar)
    src = _source(victim_root, "sub/swapped")
    path.rename(victim_root / "sub" / "moved-away")  # kept, so the new file gets a new inode
    _plant(victim_root, "sub/swapped", b"innocent")
    with pytest.raises(QuarantineError, match="replaced"):
        store.quarantine(src)
    assert path.read_bytes() == b"innocent"
    assert bait.read_bytes() == eicar
    assert store.list() == []


def test_size_limit(tmp_path: Path, victim_root: Path) -> None:
    small = QuarantineStore.for_state_dir(tmp_path / "state", max_size=1000)
    path = _plant(victim_root, "sub/big", b"x" * 1001)
    with pytest.raises(QuarantineError, match="size limit"):
        small.quarantine(_source(victim_root, "sub/big"))
    assert path.read_bytes() == b"x" * 1001
    assert small.list() == []


def test_write_failure_keeps_original_and_leaves_no_partial_entry(
        store: QuarantineStore, victim_root: Path, eicar: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _plant(victim_root, "sub/eicar.com", eicar)
    real = qmod._write_all
    calls = {"n": 0}

    def failing(fd: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(qmod, "_write_all", failing)
    with pytest.raises(QuarantineError, match=r"no space left.*original file was kept"):
        store.quarantine(_source(victim_root, "sub/eicar.com"))
    assert path.read_bytes() == eicar
    assert store.list() == []
    assert [n for n in os.listdir(store.directory) if n != "key"] == []


def test_corrupt_entries_are_reported_and_do_not_affect_others(store: QuarantineStore, victim_root: Path,
                                                               tmp_path: Path) -> None:
    entries = []
    for i in range(3):
        _plant(victim_root, f"sub/f{i}", f"payload {i}".encode() * 1000)
        entries.append(store.quarantine(_source(victim_root, f"sub/f{i}")))
    bad_tag, no_meta, good = entries
    data = store.directory / bad_tag.id / "data"
    raw = bytearray(data.read_bytes())
    raw[40] ^= 0x01
    data.write_bytes(bytes(raw))
    (store.directory / no_meta.id / "meta.json").unlink()

    listing = {e.id: e for e in store.list()}
    assert isinstance(listing[no_meta.id], BrokenEntry)
    assert "metadata is missing" in listing[no_meta.id].problem  # type: ignore[union-attr]
    assert isinstance(listing[good.id], QuarantineEntry)
    with pytest.raises(QuarantineCorrupt, match="authentication check"):
        store.restore(bad_tag.id)
    assert not (victim_root / "sub" / "f0").exists()  # nothing half-restored
    assert not [n for n in os.listdir(victim_root / "sub") if n.startswith(".hullguard")]
    with pytest.raises(QuarantineCorrupt, match="metadata is missing"):
        store.restore(no_meta.id)
    store.restore(good.id)
    assert (victim_root / "sub" / "f2").read_bytes() == b"payload 2" * 1000
    store.delete(no_meta.id)
    store.delete(bad_tag.id)
    assert store.list() == []
    with pytest.raises(QuarantineNotFound):
        store.get(bad_tag.id)


def test_truncated_and_reordered_data_fail(store: QuarantineStore, victim_root: Path) -> None:
    _plant(victim_root, "sub/big", os.urandom(2 * qmod.CHUNK + 10))
    entry = store.quarantine(_source(victim_root, "sub/big"))
    data = store.directory / entry.id / "data"
    raw = data.read_bytes()
    header, sealed = raw[:qmod._HEADER.size], raw[qmod._HEADER.size:]
    one = qmod.CHUNK + qmod.TAG
    data.write_bytes(header + sealed[:2 * one])  # final chunk dropped
    with pytest.raises(QuarantineCorrupt):
        b"".join(store.content(entry.id))
    data.write_bytes(header + sealed[one:2 * one] + sealed[:one] + sealed[2 * one:])
    with pytest.raises(QuarantineCorrupt):
        b"".join(store.content(entry.id))
    data.write_bytes(raw)
    assert len(b"".join(store.content(entry.id))) == 2 * qmod.CHUNK + 10


def test_bad_metadata_and_ids(store: QuarantineStore, victim_root: Path, eicar: bytes) -> None:
    _plant(victim_root, "sub/e", eicar)
    entry = store.quarantine(_source(victim_root, "sub/e"))
    (store.directory / entry.id / "meta.json").write_text('{"id": 3}')
    with pytest.raises(QuarantineCorrupt):
        store.get(entry.id)
    (store.directory / entry.id / "meta.json").write_text("not json")
    with pytest.raises(QuarantineCorrupt, match="not valid JSON"):
        store.get(entry.id)
    for bad in ("", "../x", "a/b", "-rf"):
        with pytest.raises(QuarantineNotFound):
            store.get(bad)


def test_missing_key_is_a_clear_error(store: QuarantineStore, victim_root: Path, eicar: bytes) -> None:
    _plant(victim_root, "sub/e", eicar)
    entry = store.quarantine(_source(victim_root, "sub/e"))
    (store.directory / "key").unlink()
    with pytest.raises(QuarantineCorrupt, match=r"key .* is missing"):
        store.restore(entry.id)


def test_export_zip(store: QuarantineStore, victim_root: Path, tmp_path: Path, eicar: bytes) -> None:
    _plant(victim_root, "sub/eicar.com", eicar)
    entry = store.quarantine(_source(victim_root, "sub/eicar.com"))
    out = tmp_path / "sample.zip"
    store.export_zip(entry.id, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["eicar.com"]
        assert zf.read("eicar.com") == eicar
    with pytest.raises(QuarantineError, match="already exists"):
        store.export_zip(entry.id, out)


def test_actions_are_journaled(tmp_path: Path, victim_root: Path, eicar: bytes) -> None:
    journal = JournalStore.open(tmp_path / "journal.db")
    try:
        store = QuarantineStore.for_state_dir(tmp_path / "state", journal=journal)
        for rel in ("sub/a", "sub/b"):
            _plant(victim_root, rel, eicar)
        first = store.quarantine(_source(victim_root, "sub/a", container_name="evil\x1b[31m"))
        second = store.quarantine(_source(victim_root, "sub/b"))
        store.restore(first.id)
        store.delete(second.id)
        records = journal.query(module=Module.QUARANTINE.value)
        assert sorted(r.action for r in records) == ["Deleted", "Quarantined", "Quarantined", "Restored"]
        assert all(r.sha1 == hashlib.sha1(eicar).hexdigest().upper() for r in records)
        assert all("\x1b" not in r.container_name for r in records)
    finally:
        journal.close()
