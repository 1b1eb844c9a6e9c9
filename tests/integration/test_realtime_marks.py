"""Which marks the agent holds, read from the kernel, and the permission events it asks for.

``/proc/<agent>/fdinfo/<fanotify fd>`` lists every mark of the group; a filesystem mark is a
``fanotify sdev:<dev> ...`` line, with the superblock's device in the kernel's encoding. So
these tests see what the kernel really watches, not what the agent believes it marked:
a container's overlay is marked while it runs and unmarked when it stops.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import docker
import pytest
from agent_support import BAD_NAME, BAD_SCRIPT, GOOD_SCRIPT, Agent, new_agent, run_container

pytestmark = [pytest.mark.integration]


def kernel_dev(st_dev: int) -> int:
    """``st_dev`` in the kernel's internal encoding (major << 20 | minor), as fdinfo prints it."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def fanotify_marks(pid: int) -> dict[int, int]:
    """sdev -> event mask of every filesystem mark held by the fanotify groups of ``pid``."""
    marks: dict[int, int] = {}
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^fanotify sdev:([0-9a-f]+) mflags:[0-9a-f]+ mask:([0-9a-f]+)", text, re.M):
            marks[int(m.group(1), 16)] = int(m.group(2), 16)
    return marks


def merged_dev(client: docker.DockerClient, cid: str) -> int:
    merged = client.api.inspect_container(cid)["GraphDriver"]["Data"]["MergedDir"]
    return kernel_dev(os.stat(merged).st_dev)


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_CLOSE_WRITE = 0x00000008


def test_container_overlays_are_marked_while_they_run_and_unmarked_when_they_stop(
        docker_client: docker.DockerClient, busybox_image: str, unique_name: str, containers: list[str],
        agents: list[Agent], tmp_path: Path) -> None:
    before = run_container(docker_client, busybox_image, f"{unique_name}-before", containers)
    before_dev = merged_dev(docker_client, before)
    agent = new_agent(agents, tmp_path / "a", [])
    assert agent.proc is not None
    pid = agent.proc.pid
    marks = fanotify_marks(pid)
    assert before_dev in marks, marks
    assert marks[before_dev] == FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM | FAN_CLOSE_WRITE
    during = run_container(docker_client, busybox_image, f"{unique_name}-during", containers)
    during_dev = merged_dev(docker_client, during)
    assert wait_for(lambda: during_dev in fanotify_marks(pid)), fanotify_marks(pid)
    docker_client.containers.get(during).stop(timeout=0)
    assert wait_for(lambda: during_dev not in fanotify_marks(pid)), fanotify_marks(pid)
    assert before_dev in fanotify_marks(pid)
    assert agent.stop() == 0
    assert not Path(f"/proc/{pid}").exists()


def test_open_perm_off_scans_executions_and_writes_but_not_opens(
        tmpfs: Path, agents: list[Agent], tmp_path: Path) -> None:
    agent = new_agent(agents, tmp_path / "a", [str(tmpfs)],
                      extra='open_perm = false\n[response]\nhost = "block"\n')
    assert agent.proc is not None
    marks = fanotify_marks(agent.proc.pid)
    assert kernel_dev(tmpfs.stat().st_dev) in marks, marks
    assert set(marks.values()) == {FAN_OPEN_EXEC_PERM | FAN_CLOSE_WRITE}, marks  # containers too
    bad = tmpfs / "bad.sh"
    bad.write_bytes(BAD_SCRIPT)
    bad.chmod(0o755)
    rec = agent.wait_record(lambda r: r.object == f"file://{bad}")  # FAN_CLOSE_WRITE
    assert rec.detection == BAD_NAME and rec.action == "Blocked"
    assert rec.event == "Event occurred on a newly created file."
    assert bad.read_bytes() == BAD_SCRIPT  # opening is not checked
    with pytest.raises(PermissionError):  # executing is, always
        subprocess.run([str(bad)], capture_output=True, timeout=30)
    agent.wait_record(lambda r: r.object == f"file://{bad}" and r.event == "Event occurred on executing a file.")
    good = tmpfs / "good.sh"
    good.write_bytes(GOOD_SCRIPT)
    good.chmod(0o755)
    assert b"good-script-ran" in subprocess.run([str(good)], capture_output=True, timeout=30).stdout
