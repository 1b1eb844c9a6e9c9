"""Real-time exclusions by path, process, user, container name and image, against the real kernel.

Each excluded access is paired with a control that differs only in the excluded property and
must be detected, so a test passes only if the exclusion (and nothing else) kept the file from
being scanned. Same harness as test_realtime.py (the agent as a subprocess, host protection on
a tmpfs this test mounts).

Excluding by user name makes the monitor read the container's own ``/etc/passwd``, which lies
on a filesystem the agent itself marked: that read must never happen on the thread that
answers permission events (it would wait for its own answer, and every process opening a file
in the container would hang with it).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from agent_support import EICAR_SHA1, Agent, dexec, new_agent, run_container

pytestmark = [pytest.mark.integration]

TEST_USER = "hgexcl"
TEST_UID = 4242


@pytest.fixture
def second_tag(docker_client: docker.DockerClient, busybox_image: str, unique_name: str) -> Iterator[str]:
    """The busybox test image under a second name of this test's own (removed afterwards)."""
    repo = f"hullguard-test/{unique_name}"
    docker_client.images.get(busybox_image).tag(repo, "excluded")
    try:
        yield f"{repo}:excluded"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(f"{repo}:excluded", noprune=True)


def _objects(agent: Agent) -> set[str]:
    return {r.object for r in agent.records()}


def test_exclusions_by_path_process_user_container_and_image(
        docker_client: docker.DockerClient, busybox_image: str, second_tag: str, unique_name: str,
        containers: list[str], agents: list[Agent], tmpfs: Path, tmp_path: Path,
        eicar: bytes) -> None:
    plain = run_container(docker_client, busybox_image, f"{unique_name}-plain", containers)
    by_name = run_container(docker_client, busybox_image, f"{unique_name}-byname", containers)
    by_image = run_container(docker_client, second_tag, f"{unique_name}-byimage", containers)
    # a user of the container's own passwd (not the host's), with a directory it may write
    add_user = (f"echo '{TEST_USER}:x:{TEST_UID}:{TEST_UID}::/:/bin/sh' >> /etc/passwd && "
                f"mkdir -m 1777 /tmp/u")
    assert dexec(plain, add_user).returncode == 0
    (tmpfs / "skip").mkdir()
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)], extra=(
        f'exclude_paths = ["{tmpfs}/skip/*"]\n'
        'exclude_processes = ["/usr/bin/tee"]\n'
        f'exclude_users = ["{TEST_USER}"]\n'
        f'exclude_containers = ["{unique_name}-byname"]\n'
        f'exclude_images = ["{second_tag}"]\n'))

    def in_container(cid: str, path: str, user: str = "0") -> None:
        out = subprocess.run(["docker", "exec", "-i", "-u", user, cid, "sh", "-c", f"cat > {path}"],
                             input=eicar, capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr

    excluded = [
        f"file://{tmpfs}/skip/eicar.com",
        f"file://{tmpfs}/tee.com",
        f"docker://hullguard-test/busybox:latest@{plain}/tmp/u/by-user.com",
        f"docker://hullguard-test/busybox:latest@{by_name}/tmp/eicar.com",
        f"docker://{second_tag}@{by_image}/tmp/eicar.com",
    ]
    (tmpfs / "skip" / "eicar.com").write_bytes(eicar)
    subprocess.run(["/usr/bin/tee", str(tmpfs / "tee.com")], input=eicar, stdout=subprocess.DEVNULL,
                   check=True, timeout=30)
    in_container(plain, "/tmp/u/by-user.com", user=str(TEST_UID))
    in_container(by_name, "/tmp/eicar.com")
    in_container(by_image, "/tmp/eicar.com")

    # the controls: the same accesses without the excluded property are detected
    controls = [
        f"file://{tmpfs}/eicar.com",
        f"file://{tmpfs}/dd.com",
        f"docker://hullguard-test/busybox:latest@{plain}/tmp/u/by-root.com",
        f"docker://hullguard-test/busybox:latest@{plain}/tmp/eicar.com",
    ]
    (tmpfs / "eicar.com").write_bytes(eicar)
    subprocess.run(["/usr/bin/dd", f"of={tmpfs / 'dd.com'}", "status=none"], input=eicar, check=True, timeout=30)
    in_container(plain, "/tmp/u/by-root.com")
    in_container(plain, "/tmp/eicar.com")
    for obj in controls:
        rec = agent.wait_record(lambda r, o=obj: r.object == o)  # type: ignore[misc]
        assert rec.sha1 == EICAR_SHA1
    time.sleep(0.5)  # the excluded events were read before the controls; give late records a chance
    assert not set(excluded) & _objects(agent), agent.records()
    # excluded host files are not cleaned; the controls on the host are
    assert (tmpfs / "skip" / "eicar.com").exists() and (tmpfs / "tee.com").exists()
    assert not (tmpfs / "eicar.com").exists()
    # (whether the excluded user may still open the file is not checked here: an agent of
    # another test on this machine may protect these containers too)
    assert agent.proc is not None and agent.proc.poll() is None
    assert "Traceback" not in agent.errors()


SELF_RULE = ('rule hullguard_self_match { meta: name = "Hullguard.Test.SelfMatch" '
             'strings: $a = "hullguard-self-match-marker" condition: $a }\n')


def test_the_agent_never_scans_its_own_files_on_a_protected_filesystem(
        tmpfs: Path, agents: list[Agent], eicar: bytes) -> None:
    """Config, signatures, journal, quarantine and run dir all on the filesystem it protects.

    The signature file names itself (its rule's string is in its own text): the scan workers
    the agent starts on SIGHUP read it, so a monitor that scanned the agent's own processes
    would detect and block it. The same read by another process is detected.
    """
    agent = Agent(tmpfs / "agent", [str(tmpfs)], extra='[response]\nhost = "block"\n')
    rule = tmpfs / "agent" / "sigs" / "self.yar"
    rule.write_text(SELF_RULE)
    agents.append(agent)
    agent.start()
    with pytest.raises(PermissionError):  # opened by this test: detected, blocked (the policy here)
        rule.read_bytes()
    agent.wait_record(lambda r: r.object == f"file://{rule}" and r.detection == "Hullguard.Test.SelfMatch")
    control = tmpfs / "agent" / "control.txt"
    control.write_bytes(eicar)
    agent.wait_record(lambda r: r.object == f"file://{control}")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)  # fresh workers of the agent read self.yar
    reloaded = agent.wait_record(lambda r: "signatures reloaded" in r.info, timeout=60)
    assert reloaded.level != "Error", agent.errors()
    time.sleep(0.5)
    # nothing of the agent's own was scanned: only the two files written by this test are recorded
    own = [r for r in agent.records() if r.object.startswith(f"file://{tmpfs}/agent/")
           and r.object not in (f"file://{rule}", f"file://{control}")]
    assert own == [], own
    out = subprocess.run(["cat", str(rule)], capture_output=True, timeout=30)  # others are still stopped
    assert out.returncode != 0 and b"not permitted" in out.stderr
    assert agent.proc.poll() is None and "Traceback" not in agent.errors()


def _posix_locks(pid: int, path: Path) -> int:
    """How many POSIX locks ``pid`` holds on ``path`` (from /proc/locks: ``MAJ:MIN:INODE``)."""
    ino = path.stat().st_ino
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  READ 1234 00:2a:17 128 128"; blocked waiters have "->" first
        if len(fields) >= 6 and fields[1] == "POSIX" and fields[4] == str(pid) \
                and fields[5].rsplit(":", 1)[-1] == str(ino):
            count += 1
    return count


def test_readers_of_the_journal_never_cost_the_agent_its_sqlite_locks(
        tmpfs: Path, agents: list[Agent], eicar: bytes) -> None:
    """The journal lies on the filesystem the agent protects, and others read it all the time.

    Closing any descriptor of a file drops the process's POSIX locks on it, and the kernel opens
    one in the agent for every fanotify event. Before realtime/lockedfiles.py, the first reader
    of the journal cost the agent its lock on ``journal.db-shm``; a later reader then took
    itself for the first connection, truncated the WAL index, and the agent died of SIGBUS.
    """
    agent = Agent(tmpfs / "agent", [str(tmpfs)])
    agents.append(agent)
    agent.start()
    assert agent.proc is not None
    shm = agent.state / "journal.db-shm"
    held = _posix_locks(agent.proc.pid, shm)
    assert held >= 1, Path("/proc/locks").read_text()
    for i in range(30):  # readers (each one a `hullguard log`) while the agent writes records
        (tmpfs / f"eicar{i}.com").write_bytes(eicar)
        agent.records()
        subprocess.run(["cat", str(shm), str(agent.state / "journal.db"), str(agent.state / "journal.db-wal")],
                       stdout=subprocess.DEVNULL, check=True, timeout=30)
    for i in range(30):
        agent.wait_record(lambda r, o=f"file://{tmpfs}/eicar{i}.com": r.object == o)  # type: ignore[misc]
    assert _posix_locks(agent.proc.pid, shm) == held, Path("/proc/locks").read_text()
    assert agent.proc.poll() is None, agent.errors()
    # the journal is the agent's own: none of its files was scanned or recorded
    assert not [r for r in agent.records() if "journal.db" in r.object]
