"""delete_in_root: deletes the scanned file and nothing else, wherever symlinks point."""

from __future__ import annotations

import os
from pathlib import Path

from hullguard.response.actions import Action
from hullguard.response.clean import delete_in_root


def ident(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_dev, st.st_ino


def test_deletes_the_right_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    victim = tmp_path / "d" / "bad"
    victim.write_text("x")
    (tmp_path / "d" / "good").write_text("y")
    assert delete_in_root(os.fsencode(tmp_path), b"d/bad", expect=ident(victim)) is Action.CLEANED_BY_DELETING
    assert not victim.exists()
    assert (tmp_path / "d" / "good").exists()


def test_refuses_symlinked_parent_dir(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    bait = outside / "bait"
    bait.write_text("keep me")
    (root / "d").symlink_to(outside)
    assert delete_in_root(os.fsencode(root), b"d/bait") is Action.CLEAN_FAILED
    assert delete_in_root(os.fsencode(root), b"d/bait", expect=ident(bait)) is Action.CLEAN_FAILED
    assert bait.read_text() == "keep me"


def test_refuses_when_inode_changed(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("scanned")
    scanned = ident(f)
    replacement = tmp_path / "g"
    replacement.write_text("another file under the same name")  # exists alongside: other inode
    os.rename(replacement, f)
    assert ident(f) != scanned
    assert delete_in_root(os.fsencode(tmp_path), b"f", expect=scanned) is Action.CLEAN_FAILED
    assert f.read_text() == "another file under the same name"


def test_refuses_final_symlink_and_directories(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "dir").mkdir()
    root = os.fsencode(tmp_path)
    assert delete_in_root(root, b"link") is Action.CLEAN_FAILED
    assert delete_in_root(root, b"dir") is Action.CLEAN_FAILED
    assert target.exists() and (tmp_path / "link").is_symlink() and (tmp_path / "dir").is_dir()


def test_refuses_paths_that_climb_out(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    bait = tmp_path / "bait"
    bait.write_text("x")
    root = os.fsencode(tmp_path / "root")
    assert delete_in_root(root, b"../bait") is Action.CLEAN_FAILED
    assert delete_in_root(root, b"") is Action.CLEAN_FAILED
    assert bait.exists()


def test_missing_file_and_symlinked_root_fail_without_raising(tmp_path: Path) -> None:
    assert delete_in_root(os.fsencode(tmp_path), b"nope") is Action.CLEAN_FAILED
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_text("x")
    (tmp_path / "rootlink").symlink_to(real)
    assert delete_in_root(os.fsencode(tmp_path / "rootlink"), b"f") is Action.CLEAN_FAILED
    assert (real / "f").exists()


def test_non_utf8_name(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/\xff\xfe"
    with open(raw, "wb") as fh:
        fh.write(b"x")
    assert delete_in_root(os.fsencode(tmp_path), b"\xff\xfe") is Action.CLEANED_BY_DELETING
    assert not os.path.lexists(raw)
