"""`hullguard scan container:` and `hullguard quarantine ...` as a user runs them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import docker
import pytest

pytestmark = pytest.mark.integration


def _hg(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "config.toml"
    if not cfg.exists():
        cfg.write_text('[response]\nvolume = "quarantine"\n')
    return subprocess.run([str(Path(sys.executable).parent / "hullguard"), "--config", str(cfg), "--state-dir",
                           str(tmp_path / "state"), *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_scan_quarantine_list_export_restore_delete(docker_client: docker.DockerClient, busybox_image: str,
                                                    unique_name: str, containers: list[str], tmp_path: Path,
                                                    eicar: bytes) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "a.com").write_bytes(eicar)
    (bind / "b.com").write_bytes(eicar)
    c = docker_client.containers.run(busybox_image, ["sleep", "600"], name=unique_name, detach=True,
                                     volumes={str(bind): {"bind": "/b"}})
    containers.append(c.id)
    scan = _hg(tmp_path, "scan", "--clean", "-q", "-f", "json", f"container:{unique_name}")
    assert scan.returncode == 1, scan.stderr  # all threats removed
    records = json.loads(scan.stdout)["records"]
    assert sorted(r["action"] for r in records) == ["Quarantined", "Quarantined"]
    assert not list(bind.iterdir())

    listing = _hg(tmp_path, "quarantine", "list", "-f", "json")
    entries = {e["container_path"]: e for e in json.loads(listing.stdout)}
    a, b = entries["/b/a.com"]["id"], entries["/b/b.com"]["id"]
    assert entries["/b/a.com"]["container_name"] == unique_name
    assert "volume" in _hg(tmp_path, "quarantine", "show", a).stdout

    out = tmp_path / "sample.zip"
    assert _hg(tmp_path, "quarantine", "export", a, "--output", str(out)).returncode == 0
    with zipfile.ZipFile(out) as zf:
        assert zf.read("a.com") == eicar

    restored = _hg(tmp_path, "quarantine", "restore", a)
    assert restored.returncode == 0, restored.stderr
    assert c.exec_run(["cat", "/b/a.com"]).output == eicar
    to = tmp_path / "elsewhere"
    to.mkdir()
    assert _hg(tmp_path, "quarantine", "restore", b, "--to", str(to), "--keep").returncode == 0
    assert (to / "b.com").read_bytes() == eicar

    data = tmp_path / "state" / "quarantine" / b / "data"
    data.write_bytes(data.read_bytes()[:-1] + b"\0")
    broken = _hg(tmp_path, "quarantine", "restore", b, "--to", str(tmp_path / "x"))
    assert broken.returncode == 100 and "authentication check" in broken.stderr
    assert "Traceback" not in broken.stderr and not (tmp_path / "x").exists()
    assert _hg(tmp_path, "quarantine", "delete", b).returncode == 0
    assert json.loads(_hg(tmp_path, "quarantine", "list", "-f", "json").stdout) == []
    missing = _hg(tmp_path, "quarantine", "show", "nope")
    assert missing.returncode == 100 and "no quarantine entry" in missing.stderr

    log = _hg(tmp_path, "log", "--module", "quarantine", "--kind", "event", "--format", "json")
    assert {r["action"] for r in json.loads(log.stdout)} == {"Quarantined", "Restored", "Deleted"}


def test_all_containers_running_and_stopped_unreadable_mounts_and_control_characters(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        tmp_path: Path, eicar: bytes) -> None:
    """`--all-containers` reaches a running and a stopped container; mounts the scan may not read
    (run without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, as a confined root would) are reported as
    not scanned; a file name with terminal escapes never reaches the output raw."""
    bind = tmp_path / "bind"
    (bind / "locked").mkdir(parents=True)
    (bind / "evil\x1b[31m\n.com").write_bytes(eicar)
    (bind / "locked" / "hidden.com").write_bytes(eicar)
    os.chmod(bind / "locked", 0)
    closed = tmp_path / "closed"
    closed.mkdir()
    (closed / "e.com").write_bytes(eicar)
    os.chmod(closed, 0)
    running = docker_client.containers.run(busybox_image, ["sleep", "600"], name=f"{unique_name}-run",
                                           detach=True, volumes={str(bind): {"bind": "/b"},
                                                                 str(closed): {"bind": "/closed"}})
    containers.append(running.id)
    stopped = docker_client.containers.run(busybox_image, ["sh", "-c", f"printf '%s' '{eicar.decode()}' "
                                                           "> /root/w.com"], name=f"{unique_name}-stop",
                                           detach=True)
    containers.append(stopped.id)
    assert stopped.wait(timeout=60)["StatusCode"] == 0
    confined = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    base = [*confined, str(Path(sys.executable).parent / "hullguard"), "--config", str(cfg), "--state-dir",
            str(tmp_path / "state"), "scan", "--all-containers"]
    scan = subprocess.run([*base, "-q", "-f", "json"], capture_output=True, text=True, timeout=300, check=False)
    assert scan.returncode == 50, scan.stderr  # other containers on this host may add findings too
    records = json.loads(scan.stdout)["records"]
    ours = {(r["container_id"], r["object"].split("@", 1)[1].split("/", 1)[1], r["action"]): r["info"]
            for r in records if r["container_id"] in (running.id, stopped.id)}
    assert (running.id, "b/evil\\x1b[31m\\x0a.com", "Retained") in ours, ours
    assert (stopped.id, "root/w.com", "Retained") in ours, ours
    assert "writable layer (container stopped)" in ours[(stopped.id, "root/w.com", "Retained")]
    assert "unreadable" in ours[(running.id, "b/locked", "Not scanned")]
    assert "unreadable" in ours[(running.id, "closed", "Not scanned")]
    assert not any("hidden.com" in o or o.endswith("closed/e.com") for _, o, _ in ours)
    table = subprocess.run(base, capture_output=True, text=True, timeout=300, check=False)
    assert table.returncode == 50
    assert "evil\\x1b[31m\\x0a.com" in table.stdout and "evil\\x1b" in table.stderr
    assert "\x1b" not in table.stdout and "\x1b" not in table.stderr
    os.chmod(bind / "locked", 0o700)
    os.chmod(closed, 0o700)

    # quarantined under that name: list and show (table and JSON) stay sanitised
    cfg.write_text('[response]\nvolume = "quarantine"\n')
    assert _hg(tmp_path, "scan", "--clean", "-q", f"container:{running.id}").returncode == 1
    listing = _hg(tmp_path, "quarantine", "list")
    assert listing.returncode == 0 and "\x1b" not in listing.stdout
    entries = {e["container_path"]: e for e in json.loads(_hg(tmp_path, "quarantine", "list", "-f", "json").stdout)}
    assert set(entries) == {"/b/evil\\x1b[31m\\x0a.com", "/b/locked/hidden.com", "/closed/e.com"}
    entry = entries["/b/evil\\x1b[31m\\x0a.com"]
    assert entry["id"] in listing.stdout and f"{unique_name}-run" in listing.stdout
    shown = json.loads(_hg(tmp_path, "quarantine", "show", entry["id"], "-f", "json").stdout)
    assert shown["sha1"] == hashlib.sha1(eicar).hexdigest().upper() and shown["image"] == busybox_image
    assert shown["container_id"] == running.id and shown["mode"] == "0644"
    text = _hg(tmp_path, "quarantine", "show", entry["id"])
    assert "\x1b" not in text.stdout and f"container_name  {unique_name}-run" in text.stdout
    bad = _hg(tmp_path, "quarantine", "restore", entry["id"], "--to", str(tmp_path / "no" / "such" / "dir"))
    assert bad.returncode == 100 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert _hg(tmp_path, "quarantine", "restore", entry["id"]).returncode == 0
    assert (bind / "evil\x1b[31m\n.com").read_bytes() == eicar
