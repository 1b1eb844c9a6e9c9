"""Hash signatures (.hdb/.hsb), YARA meta, signature loading errors and db_version."""

from __future__ import annotations

import gc
import hashlib
import pickle
import sys
import threading
from pathlib import Path

import pytest

from hullguard.engine.engine import Engine
from hullguard.engine.errors import SignatureError
from hullguard.engine.hashsigs import HashDatabase, parse_line
from hullguard.engine.holder import EngineHolder
from hullguard.engine.verdict import VerdictKind

SAMPLE = b"hullguard crafted harmless sample\n"


def test_parse_line_kinds() -> None:
    md5 = hashlib.md5(SAMPLE).hexdigest()
    sig = parse_line(f"{md5}:{len(SAMPLE)}:Test.Md5", "x.hdb", 3)
    assert sig is not None and sig.algo == "md5" and sig.size == len(SAMPLE) and sig.source == "x.hdb:3"
    sha1 = hashlib.sha1(SAMPLE).hexdigest().upper()
    sig = parse_line(f"{sha1}:*:Test.Sha1", "x.hsb", 1)
    assert sig is not None and sig.algo == "sha1" and sig.size is None and sig.digest == sha1.lower()
    sha256 = hashlib.sha256(SAMPLE).hexdigest()
    sig = parse_line(f"{sha256}:{len(SAMPLE)}:Test.Sha256:73", "x.hsb", 1)
    assert sig is not None and sig.algo == "sha256"
    assert parse_line("# comment", "x.hsb", 1) is None
    assert parse_line("   ", "x.hsb", 1) is None


@pytest.mark.parametrize(
    "line",
    [
        "abc:12:Short.Hash",
        "z" * 32 + ":12:Not.Hex",
        "0" * 32 + ":twelve:Bad.Size",
        "0" * 32 + ":12",
        "0" * 32 + ":12:",
        "0" * 32 + ":12:Name:x",
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str) -> None:
    sigs = tmp_path / "bad.hsb"
    sigs.write_text(f"# header\n\n{line}\n")
    with pytest.raises(SignatureError) as err:
        Engine.load([tmp_path], builtin=False)
    assert str(err.value).startswith(f"{sigs}:3: ")
    assert isinstance(err.value, ValueError)


def test_hash_signatures_detect(tmp_path: Path) -> None:
    other = b"another harmless sample of a different size\n"
    (tmp_path / "a.hdb").write_text(f"{hashlib.md5(SAMPLE).hexdigest()}:{len(SAMPLE)}:Test.Md5.Sample\n")
    (tmp_path / "b.hsb").write_text(
        f"{hashlib.sha256(other).hexdigest()}:*:Test.Sha256.AnySize\n"
        f"{hashlib.sha1(b'never').hexdigest()}:{len(SAMPLE)}:Test.Sha1.Other\n"
    )
    (tmp_path / "README").write_text("not a signature file\n")
    eng = Engine.load([tmp_path], builtin=False)
    out = eng.scan_bytes(SAMPLE)
    assert [v.detection.name for v in out.detections if v.detection] == ["Test.Md5.Sample"]
    v = out.detections[0]
    assert v.sha1 == hashlib.sha1(SAMPLE).hexdigest().upper()
    assert v.detection is not None and v.detection.type == "Malware"
    assert v.detection.tags == "@NAME=Test.Md5.Sample@TYPE=Malware@SUSP=inf"
    assert v.detection.signature == f"hdb:{tmp_path / 'a.hdb'}:1"
    found = [v.detection.name for v in eng.scan_bytes(other).detections if v.detection]
    assert found == ["Test.Sha256.AnySize"]
    assert eng.scan_bytes(SAMPLE + b"x").is_clean


def test_hashing_skipped_without_matching_size() -> None:
    db = HashDatabase()
    db.load_text(f"{hashlib.md5(SAMPLE).hexdigest()}:{len(SAMPLE)}:X\n", "t.hdb")
    assert db.algorithms_for(len(SAMPLE)) == ("md5",)
    assert db.algorithms_for(len(SAMPLE) + 1) == ()
    db.load_text(f"{hashlib.sha256(SAMPLE).hexdigest()}:*:Y\n", "u.hsb")
    assert db.algorithms_for(1) == ("sha256",)
    assert db.algorithms_for(len(SAMPLE)) == ("md5", "sha256")


def test_yara_meta_name_type_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "r.yar").write_text(
        'rule with_meta { meta: name = "Test/Named.Rule" type = "Spyware" suspicion = "80"\n'
        '  strings: $a = "hullguard-marker-one" condition: $a }\n'
        'rule no_meta { strings: $a = "hullguard-marker-two" condition: $a }\n'
    )
    eng = Engine.load([tmp_path], builtin=False)
    d = eng.scan_bytes(b"xx hullguard-marker-one xx").detections[0].detection
    assert d is not None
    assert (d.name, d.type, d.suspicion) == ("Test/Named.Rule", "Spyware", "80")
    assert d.signature == "yara:with_meta"
    assert d.tags == "@NAME=Test/Named.Rule@TYPE=Spyware@SUSP=80"
    d = eng.scan_bytes(b"hullguard-marker-two").detections[0].detection
    assert d is not None and (d.name, d.type, d.suspicion) == ("no_meta", "Malware", "inf")


def test_same_rule_name_in_two_files(tmp_path: Path) -> None:
    for n in ("a", "b"):
        (tmp_path / f"{n}.yara").write_text(f'rule dup {{ strings: $a = "marker-{n}-x" condition: $a }}\n')
    eng = Engine.load([tmp_path], builtin=False)
    assert len(eng.scan_bytes(b"marker-a-x marker-b-x").detections) == 1  # same detection: deduplicated
    assert eng.scan_bytes(b"marker-b-x").detections


def test_yara_compile_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yar"
    bad.write_text('rule ok { condition: true }\n\nrule broken {\n  condition: $nope\n}\n')
    with pytest.raises(SignatureError) as err:
        Engine.load([tmp_path], builtin=False)
    assert str(err.value).startswith(f"{bad}:4: YARA: ")


def _fail_and_leave_a_cycle(sigdir: Path) -> None:
    try:
        Engine.load([sigdir], builtin=False)
    except SignatureError as exc:
        exc.add_note("kept in a reference cycle")
        cycle: list[object] = [exc]
        cycle.append(cycle)  # only the garbage collector frees it, on whichever thread runs it
        return
    raise AssertionError("the bad rule file was accepted")


def test_failed_compile_leaves_no_compiler_for_another_thread(tmp_path: Path) -> None:
    """A failed reload's error, collected later on another thread, must not drop a yara_x.Compiler
    there (it is unsendable: leaked with an "Exception ignored" message)."""
    (tmp_path / "bad.yar").write_text("rule broken { condition: $nope }\n")
    ignored: list[str] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: ignored.append(str(u.exc_value))
    gc.disable()
    try:
        _fail_and_leave_a_cycle(tmp_path)
        thread = threading.Thread(target=gc.collect)
        thread.start()
        thread.join()
    finally:
        gc.enable()
        sys.unraisablehook = old_hook
    assert not any("unsendable" in m for m in ignored), ignored


def test_missing_signature_dir(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="signature directory not found"):
        Engine.load([tmp_path / "nope"])


def test_db_version_stable_and_sensitive(tmp_path: Path) -> None:
    (tmp_path / "a.hsb").write_text(f"{hashlib.sha1(SAMPLE).hexdigest()}:*:X\n")
    v1 = Engine.load([tmp_path]).db_version
    assert v1 == Engine.load([tmp_path]).db_version
    assert v1 != Engine.load([tmp_path], builtin=False).db_version
    (tmp_path / "a.hsb").write_text(f"{hashlib.sha1(SAMPLE).hexdigest()}:*:Y\n")
    assert v1 != Engine.load([tmp_path]).db_version
    assert len(v1) == 16 and int(v1, 16) >= 0


def test_engine_pickles_by_reload(tmp_path: Path) -> None:
    (tmp_path / "a.hsb").write_text(f"{hashlib.sha1(SAMPLE).hexdigest()}:*:Test.Pickled\n")
    eng = Engine.load([tmp_path])
    clone = pickle.loads(pickle.dumps(eng))
    assert clone is not eng and clone.db_version == eng.db_version
    assert clone.scan_bytes(SAMPLE).detections[0].kind is VerdictKind.DETECTED


def test_holder_swaps(tmp_path: Path) -> None:
    a = Engine.load(builtin=False)
    b = Engine.load()
    holder = EngineHolder(a)
    assert holder.engine is a
    assert holder.reload(b) is a
    assert holder.engine is b and holder.generation == 1


def test_threads_share_one_engine(eicar: bytes) -> None:
    import threading

    eng = Engine.load()
    results: list[int] = []

    def work() -> None:
        for _ in range(20):
            results.append(len(eng.scan_bytes(eicar).detections) + len(eng.scan_bytes(b"clean").detections))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1] * 80
