"""Container scans against the real Docker engine: what is cleaned, what is kept, what is never touched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from hullguard.agent.config import EngineConfig
from hullguard.agent.ondemand import EngineFromConfig, ScanOptions, ScanReport, run_scan
from hullguard.journal.record import RecordKind
from hullguard.objects import containers as ctr
from hullguard.objects.targets import Target, TargetError
from hullguard.response import quarantine
from hullguard.response.policy import PolicyConfig, RemediationLevel, Remedy

pytestmark = pytest.mark.integration

CLEAN_ALL = PolicyConfig(host=Remedy.CLEAN, container=Remedy.CLEAN, volume=Remedy.CLEAN,
                         container_private=Remedy.CLEAN, image=Remedy.CLEAN)
"""Clean everywhere the policy lets us: what is still kept is kept by the guards, not the config."""


def _scan(targets: list[Target], policy: PolicyConfig) -> ScanReport:
    try:
        return run_scan(targets, ScanOptions(workers=1, policy=policy),
                        engine_factory=EngineFromConfig(EngineConfig()))
    finally:
        ctr.release_pins()


def _detections(report: ScanReport) -> dict[str, tuple[str, str]]:
    """Container path -> (action, info) of each detection record."""
    out = {}
    for r in report.records:
        if r.kind is RecordKind.DETECTION:
            out[r.object.split("@", 1)[1].split("/", 1)[1]] = (r.action, r.info)
    return out


def _exists_inside(c: docker.models.containers.Container, path: str) -> bool:
    return c.exec_run(["test", "-e", path]).exit_code == 0


@pytest.fixture
def volume(docker_client: docker.DockerClient, unique_name: str) -> Iterator[str]:
    name = f"{unique_name}-vol"
    docker_client.volumes.create(name)
    yield name
    for user in docker_client.containers.list(all=True, filters={"volume": name}):
        user.remove(force=True)  # the test's own containers (named after unique_name)
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.volumes.get(name).remove(force=True)


def _run(docker_client: docker.DockerClient, busybox_image: str, name: str, made: list[str],
         **kw: object) -> docker.models.containers.Container:
    c = docker_client.containers.run(busybox_image, ["sleep", "600"], name=name, detach=True, **kw)
    made.append(c.id)
    return c


def _volume_dir(docker_client: docker.DockerClient, name: str) -> Path:
    return Path(docker_client.volumes.get(name).attrs["Mountpoint"])


def test_bind_and_volume_cleaned_tmpfs_retained(docker_client: docker.DockerClient, busybox_image: str,
                                                unique_name: str, containers: list[str], volume: str,
                                                tmp_path: Path, eicar: bytes) -> None:
    bind = tmp_path / "bind"
    bind.mkdir()
    (bind / "eicar.com").write_bytes(eicar)
    c = _run(docker_client, busybox_image, unique_name, containers,
             volumes={str(bind): {"bind": "/b", "mode": "rw"}, volume: {"bind": "/data", "mode": "rw"}},
             tmpfs={"/scratch": ""})
    vol = _volume_dir(docker_client, volume)
    (vol / "eicar.com").write_bytes(eicar)
    assert c.exec_run(["sh", "-c", "cat /b/eicar.com > /scratch/eicar.com && "
                                   "cat /b/eicar.com > /root/layer.com"]).exit_code == 0

    report = _scan(list(ctr.resolve_container(unique_name)), CLEAN_ALL)
    found = _detections(report)
    assert found["b/eicar.com"][0] == "Cleaned by deleting"
    assert "bind mount" in found["b/eicar.com"][1]
    assert found["data/eicar.com"][0] == "Cleaned by deleting"
    assert f"volume {volume} at /data" in found["data/eicar.com"][1]
    assert found["root/layer.com"][0] == "Cleaned by deleting"  # the writable layer, via MergedDir
    assert "container root (overlay" in found["root/layer.com"][1]
    assert not _exists_inside(c, "/root/layer.com")
    action, info = found["scratch/eicar.com"]
    assert action == "Retained" and "only in the container's private mount namespace" in info
    assert not (bind / "eicar.com").exists() and not (vol / "eicar.com").exists()
    assert not _exists_inside(c, "/b/eicar.com") and not _exists_inside(c, "/data/eicar.com")
    assert c.exec_run(["cat", "/scratch/eicar.com"]).output == eicar
    assert all(r.container_id == c.id and r.container_name == unique_name for r in report.records)
    assert all(r.object.startswith(f"docker://{busybox_image}@{c.id}/") for r in report.records)


def test_volume_quarantined_then_restored_into_the_container(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        volume: str, tmp_path: Path, eicar: bytes) -> None:
    c = _run(docker_client, busybox_image, unique_name, containers, volumes={volume: {"bind": "/data"}})
    assert c.exec_run(["sh", "-c", f"printf '%s' '{eicar.decode()}' > /data/e.com && chmod 640 /data/e.com "
                                   "&& chown 65534:65534 /data/e.com"]).exit_code == 0
    store = quarantine.QuarantineStore.for_state_dir(tmp_path / "state")
    quarantine.install(store)
    report = _scan(list(ctr.resolve_container(c.id)), PolicyConfig(volume=Remedy.QUARANTINE))
    assert _detections(report)["data/e.com"][0] == "Quarantined"
    assert not _exists_inside(c, "/data/e.com")
    [entry] = store.list()
    assert isinstance(entry, quarantine.QuarantineEntry)
    assert (entry.container_id, entry.container_path, entry.uid, entry.mode) == (c.id, "/data/e.com",
                                                                                65534, 0o640)
    assert entry.sha1 == hashlib.sha1(eicar).hexdigest().upper()
    place = ctr.restore_location(docker_client, c.id, entry.container_path)
    assert place == (os.fsencode(_volume_dir(docker_client, volume)), b"e.com")
    store.restore(entry.id, locator=lambda e: ctr.restore_location(docker_client, c.id,
                                                                          e.container_path))
    assert c.exec_run(["cat", "/data/e.com"]).output == eicar
    assert c.exec_run(["stat", "-c", "%u %g %a", "/data/e.com"]).output.split() == [b"65534", b"65534",
                                                                                     b"640"]


def test_symlinks_and_hard_links_to_host_files_are_never_followed(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        volume: str, tmp_path: Path, eicar: bytes) -> None:
    bait_dir = tmp_path / "host-bait"
    bait_dir.mkdir()
    bait = bait_dir / "bait.com"
    bait.write_bytes(eicar)
    vol = _volume_dir(docker_client, volume)
    os.symlink(bait, vol / "link-to-bait.com")
    os.symlink(bait_dir, vol / "dirlink")
    hard_bait = vol.parent / "hard-bait.com"  # same file system as the volume, outside its root
    hard_bait.write_bytes(eicar)
    os.link(hard_bait, vol / "hard.com")
    c = _run(docker_client, busybox_image, unique_name, containers, volumes={volume: {"bind": "/data"}},
             tmpfs={"/scratch": ""})
    # the same links made by the container on a mount only it has: a link through
    # /proc/<pid>/root that is followed resolves against the host's root, onto the bait
    assert c.exec_run(["sh", "-c", f"ln -s {bait} /scratch/link.com && ln -s {bait_dir} /scratch/dirlink"
                       ]).exit_code == 0
    store = quarantine.QuarantineStore.for_state_dir(tmp_path / "state")
    quarantine.install(store)
    for policy in (CLEAN_ALL, PolicyConfig(volume=Remedy.QUARANTINE, container_private=Remedy.QUARANTINE)):
        report = _scan(list(ctr.resolve_container(c.id)), policy)
        found = _detections(report)
        assert set(found) == {"data/hard.com"}, found  # the symlinks were not read
        assert report.skipped, report  # the links were seen, and skipped
        action, info = found["data/hard.com"]
        assert action == "Retained" and "hard-linked" in info
    assert bait.read_bytes() == eicar and hard_bait.read_bytes() == eicar
    assert os.stat(hard_bait).st_nlink == 2
    assert store.list() == []


def test_directory_swapped_for_a_symlink_during_the_scan(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        volume: str, tmp_path: Path, eicar: bytes) -> None:
    bait_dir = tmp_path / "host-bait"
    bait_dir.mkdir()
    for i in range(300):
        (bait_dir / f"bait{i:03}.com").write_bytes(eicar)
    vol = _volume_dir(docker_client, volume)
    for d in range(20):
        sub = vol / f"d{d:02}"
        sub.mkdir()
        for i in range(300):
            (sub / f"f{i:03}.txt").write_bytes(b"harmless %d" % i)
    c = _run(docker_client, busybox_image, unique_name, containers, volumes={volume: {"bind": "/data"}})
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            for d in range(20):
                sub = vol / f"d{d:02}"
                with contextlib.suppress(OSError):
                    os.rename(sub, vol / f"d{d:02}.real")
                    os.symlink(bait_dir, sub)
                    swaps += 1
                    time.sleep(0.0005)
                    os.unlink(sub)
                    os.rename(vol / f"d{d:02}.real", sub)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            report = _scan(list(ctr.resolve_container(c.id)), CLEAN_ALL)
            assert not [r for r in report.records if r.kind is RecordKind.DETECTION], report.records
    finally:
        stop.set()
        thread.join()
    assert swaps > 0
    assert sorted(os.listdir(bait_dir)) == [f"bait{i:03}.com" for i in range(300)]
    assert all((bait_dir / n).read_bytes() == eicar for n in os.listdir(bait_dir))


def test_bind_source_swapped_for_a_symlink(docker_client: docker.DockerClient, busybox_image: str,
                                          unique_name: str, containers: list[str], tmp_path: Path,
                                          eicar: bytes) -> None:
    """A parent of a bind mount's host path replaced by a symlink (by anyone who can write it):
    the running container is scanned by what it really mounted, the stopped one not at all."""
    base = tmp_path / "bind-base"
    (base / "x" / "src").mkdir(parents=True)
    (base / "x" / "src" / "mounted.com").write_bytes(eicar)
    evil = tmp_path / "evil"
    (evil / "src").mkdir(parents=True)
    bait = evil / "src" / "bait.com"
    bait.write_bytes(eicar)
    c = _run(docker_client, busybox_image, unique_name, containers,
             volumes={str(base / "x" / "src"): {"bind": "/b", "mode": "rw"}})
    (base / "x").rename(base / "x.real")
    (base / "x").symlink_to(evil)
    store = quarantine.QuarantineStore.for_state_dir(tmp_path / "state")
    quarantine.install(store)
    report = _scan(list(ctr.resolve_container(c.id)), PolicyConfig(volume=Remedy.QUARANTINE))
    found = _detections(report)
    assert set(found) == {"b/mounted.com"}, found
    assert found["b/mounted.com"][0] == "Quarantined"
    assert not (base / "x.real" / "src" / "mounted.com").exists()
    assert bait.read_bytes() == eicar
    # restored into what the container mounts, not through the swapped host path
    [entry] = store.list()
    assert isinstance(entry, quarantine.QuarantineEntry)

    def locate(e: quarantine.QuarantineEntry) -> tuple[bytes, bytes] | None:
        return ctr.restore_location(docker_client, c.id, e.container_path)

    try:
        store.restore(entry.id, locator=locate, keep=True)
    finally:
        ctr.release_pins()
    assert (base / "x.real" / "src" / "mounted.com").read_bytes() == eicar
    assert c.exec_run(["cat", "/b/mounted.com"]).output == eicar
    assert sorted(os.listdir(evil / "src")) == ["bait.com"]
    (base / "x.real" / "src" / "mounted.com").unlink()

    (base / "x.real" / "src" / "again.com").write_bytes(eicar)
    c.stop(timeout=1)
    report = _scan(list(ctr.resolve_container(c.id)), CLEAN_ALL)
    assert not _detections(report)
    [refused] = [r for r in report.records if r.object.endswith(f"@{c.id}/b")]
    assert refused.kind is RecordKind.NOT_SCANNED and "not followed while the container is stopped" in refused.info
    assert report.exit_code == 10
    assert bait.read_bytes() == eicar
    assert (base / "x.real" / "src" / "again.com").exists()
    with pytest.raises(ctr.ContainerError, match=r"symbolic link \(not followed\); use --to"):
        locate(entry)
    assert sorted(os.listdir(evil / "src")) == ["bait.com"]


def test_stopped_container_writable_layer_and_image_layers(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        eicar: bytes) -> None:
    from harness import busybox_rootfs_tar

    image = f"hullguard-test/{unique_name}:infected"
    subprocess.run(["docker", "import", "-c", 'CMD ["/bin/sh"]', "-", image],
                   input=busybox_rootfs_tar({"opt/in-image.com": eicar}), check=True, capture_output=True)
    try:
        c = _run(docker_client, image, unique_name, containers)
        assert c.exec_run(["sh", "-c", f"printf '%s' '{eicar.decode()}' > /root/written.com"]).exit_code == 0
        c.stop(timeout=1)
        c.reload()
        assert c.status == "exited"
        report = _scan(list(ctr.resolve_container(unique_name)), CLEAN_ALL)
        found = _detections(report)
        assert found["root/written.com"][0] == "Cleaned by deleting"
        assert "writable layer (container stopped)" in found["root/written.com"][1]
        assert found["opt/in-image.com"][0] == "Retained"  # image layers are never written
        assert "rebuild the image" in found["opt/in-image.com"][1]
        assert "image layer sha256:" in found["opt/in-image.com"][1]
        layer_records = [r for r in report.records if r.object.endswith("/opt/in-image.com")]
        assert layer_records[0].layer.startswith("sha256:")
        c.start()
        assert not _exists_inside(c, "/root/written.com")
        assert _exists_inside(c, "/opt/in-image.com")
    finally:
        for cid in list(containers):
            with contextlib.suppress(OSError):
                docker_client.containers.get(cid).remove(force=True)
        docker_client.images.remove(image, force=True)


def test_container_that_disappears_and_bad_names(docker_client: docker.DockerClient, busybox_image: str,
                                                 unique_name: str, containers: list[str], volume: str,
                                                 tmp_path: Path, eicar: bytes) -> None:
    vol = _volume_dir(docker_client, volume)
    (vol / "evil\x1b[31m\n.com").write_bytes(eicar)
    bind = tmp_path / "gone"
    bind.mkdir()
    c = _run(docker_client, busybox_image, unique_name, containers,
             volumes={volume: {"bind": "/data"}, str(bind): {"bind": "/b"}})
    report = _scan(list(ctr.resolve_container(c.id)), PolicyConfig())
    [rec] = [r for r in report.records if r.kind is RecordKind.DETECTION]
    assert "\x1b" not in rec.object and "\n" not in rec.object and "\\x1b[31m\\x0a.com" in rec.object

    targets = list(ctr.resolve_container(c.id))
    c.remove(force=True)
    shutil.rmtree(bind)
    report = _scan(targets, PolicyConfig())  # the root overlay is gone: reported, no crash
    assert report.exit_code in (10, 50)
    assert any(r.kind is RecordKind.NOT_SCANNED for r in report.records)

    with pytest.raises(TargetError) as exc:
        ctr.resolve_container("no-such\x1b[2Jcontainer")
    assert "\x1b" not in str(exc.value) and "no such container" in str(exc.value)


def test_remediation_levels(docker_client: docker.DockerClient, busybox_image: str, unique_name: str,
                            containers: list[str], volume: str, eicar: bytes) -> None:
    vol = _volume_dir(docker_client, volume)
    (vol / "e.com").write_bytes(eicar)
    c = _run(docker_client, busybox_image, unique_name, containers, volumes={volume: {"bind": "/data"}})
    never = PolicyConfig(volume=Remedy.CLEAN, level=RemediationLevel.NEVER)
    report = _scan(list(ctr.resolve_container(c.id)), never)
    assert _detections(report)["data/e.com"][0] == "Retained"
    assert (vol / "e.com").exists()
    safe = PolicyConfig(volume=Remedy.CLEAN, level=RemediationLevel.SAFE)
    report = _scan(list(ctr.resolve_container(c.id)), safe)
    assert _detections(report)["data/e.com"][0] == "Cleaned by deleting"


def test_full_disk_during_quarantine_keeps_the_original(tmp_path: Path, eicar: bytes) -> None:
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(state)], check=True)
    try:
        root = tmp_path / "root"
        root.mkdir()
        big = root / "big.bin"
        payload = os.urandom(1024 * 1024)
        big.write_bytes(payload)
        st = big.stat()
        store = quarantine.QuarantineStore.for_state_dir(state)
        with pytest.raises(quarantine.QuarantineError, match="no space left"):
            store.quarantine(quarantine.QuarantineSource(os.fsencode(root), b"big.bin",
                                                         (st.st_dev, st.st_ino)))
        assert big.read_bytes() == payload
        assert store.list() == []
        assert [n for n in os.listdir(state / "quarantine") if n != "key"] == []
        (root / "e.com").write_bytes(eicar)  # a small file still fits afterwards
        est = (root / "e.com").stat()
        entry = store.quarantine(quarantine.QuarantineSource(os.fsencode(root), b"e.com",
                                                             (est.st_dev, est.st_ino)))
        assert b"".join(store.content(entry.id)) == eicar
    finally:
        subprocess.run(["umount", str(state)], check=True)


@pytest.mark.slow
def test_quarantine_and_restore_50mb_in_a_container(docker_client: docker.DockerClient, busybox_image: str,
                                                    unique_name: str, containers: list[str], volume: str,
                                                    tmp_path: Path) -> None:
    payload = os.urandom(50 * 1024 * 1024)
    vol = _volume_dir(docker_client, volume)
    big = vol / "big.bin"
    big.write_bytes(payload)
    os.chown(big, 1234, 5678)
    os.chmod(big, 0o604)
    os.utime(big, ns=(1_700_000_000_111_111_111, 1_650_000_000_222_222_222))
    c = _run(docker_client, busybox_image, unique_name, containers, volumes={volume: {"bind": "/data"}})
    st = big.stat()
    store = quarantine.QuarantineStore.for_state_dir(tmp_path / "state")
    t0 = time.monotonic()
    entry = store.quarantine(quarantine.QuarantineSource(
        os.fsencode(vol), b"big.bin", (st.st_dev, st.st_ino), uri=f"docker://{busybox_image}@{c.id}/data/big.bin",
        container_path="/data/big.bin", container_id=c.id, container_name=unique_name))
    t1 = time.monotonic()
    assert not big.exists() and not _exists_inside(c, "/data/big.bin")
    data = (store.directory / entry.id / "data").read_bytes()
    assert payload[:4096] not in data
    store.restore(entry.id, locator=lambda e: ctr.restore_location(docker_client, c.id,
                                                                          e.container_path))
    t2 = time.monotonic()
    assert hashlib.sha256(big.read_bytes()).digest() == hashlib.sha256(payload).digest()
    nst = big.stat()
    assert (nst.st_uid, nst.st_gid, nst.st_mode & 0o7777, nst.st_mtime_ns) == (1234, 5678, 0o604,
                                                                                1_650_000_000_222_222_222)
    assert c.exec_run(["sha1sum", "/data/big.bin"]).output.split()[0].decode() == \
        hashlib.sha1(payload).hexdigest()
    print(f"50 MB: quarantine {t1 - t0:.2f} s, restore {t2 - t1:.2f} s")


def test_writable_layer_quarantined_restored_into_the_container_and_refused_once_it_is_gone(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        tmp_path: Path, eicar: bytes) -> None:
    c = _run(docker_client, busybox_image, unique_name, containers)
    assert c.exec_run(["sh", "-c", f"mkdir -p /srv/app && printf '%s' '{eicar.decode()}' > /srv/app/q.com "
                                   "&& chmod 600 /srv/app/q.com && chown 123:456 /srv/app/q.com "
                                   "&& touch -d '2020-02-03 04:05:06' /srv/app/q.com"]).exit_code == 0
    stat_cmd = ["stat", "-c", "%u %g %a %Y", "/srv/app/q.com"]
    before = c.exec_run(stat_cmd).output
    store = quarantine.QuarantineStore.for_state_dir(tmp_path / "state")
    quarantine.install(store)
    report = _scan(list(ctr.resolve_container(unique_name)), PolicyConfig(container=Remedy.QUARANTINE))
    found = _detections(report)  # a real-time agent running on this host would deny the read: "Not scanned"
    assert found.get("srv/app/q.com", ("",))[0] == "Quarantined", [(r.object, r.info) for r in report.records]
    assert not _exists_inside(c, "/srv/app/q.com")
    [entry] = store.list()
    assert isinstance(entry, quarantine.QuarantineEntry)
    assert (entry.scope, entry.image, entry.container_path) == ("container", busybox_image, "/srv/app/q.com")

    def locate(e: quarantine.QuarantineEntry) -> tuple[bytes, bytes] | None:
        return ctr.restore_location(docker_client, e.container_id, e.container_path)

    store.restore(entry.id, locator=locate, keep=True)
    assert c.exec_run(["cat", "/srv/app/q.com"]).output == eicar
    assert c.exec_run(stat_cmd).output == before
    c.remove(force=True)
    with pytest.raises(quarantine.QuarantineError, match=f"container {unique_name} no longer exists; use --to"):
        store.restore(entry.id, locator=locate)
    assert [e.id for e in store.list()] == [entry.id]  # kept for a later --to


def test_scheduled_scan_of_all_containers_is_a_journal_session(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        volume: str, tmp_path: Path, eicar: bytes) -> None:
    """Report only (``clean = false``): every container on the host is scanned, and other tests'
    containers must not lose their files to this one."""
    from hullguard.agent.config import parse_config
    from hullguard.agent.schedule import default_runner, parse_jobs
    from hullguard.journal.store import JournalStore

    (_volume_dir(docker_client, volume) / "sched.com").write_bytes(eicar)
    c = _run(docker_client, busybox_image, unique_name, containers, volumes={volume: {"bind": "/data"}})
    cfg = parse_config({"state_dir": str(tmp_path / "state"), "scan": {"workers": 1},
                        "response": {"volume": "quarantine"},
                        "schedule": {"jobs": {"all": {"cron": "0 3 * * *", "all_containers": True}}}})
    [job] = parse_jobs(cfg.schedule)
    report = default_runner(cfg)(job)
    [rec] = [r for r in report.records if r.container_id == c.id]
    assert rec.object.endswith("/data/sched.com") and rec.action == "Retained"
    assert (_volume_dir(docker_client, volume) / "sched.com").exists()
    with JournalStore.open(cfg.journal_path) as journal:
        [session] = journal.sessions()
        assert session.targets == ["--all-containers"] and "(schedule all)" in session.user
        assert session.detections >= 1 and session.id == rec.session_id
