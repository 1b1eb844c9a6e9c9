"""pid -> container id from every cgroup path format the runtimes use."""

from __future__ import annotations

import os

import pytest

from hullguard.runtime.cgroup import container_from_cgroup, container_of_pid

CID = "26c280c4b0886bb316921e0f295c7a5846234bfc790eac439b469feedebc7801"


@pytest.mark.parametrize(("text", "runtime"), [
    (f"12:pids:/docker/{CID}\n9:name=systemd:/docker/{CID}\n", "docker"),
    (f"0::/system.slice/docker-{CID}.scope\n", "docker"),
    (f"0::/docker/{CID}/init.scope\n", "docker"),
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{CID}.scope\n",
     "containerd"),
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx.slice/crio-{CID}.scope\n", "cri-o"),
    (f"0::/machine.slice/libpod-{CID}.scope/container\n", "podman"),
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n", "podman"),
    (f"11:memory:/kubepods/besteffort/pod0b1f-22/{CID}\n", "kubernetes"),
])
def test_container_ids_in_all_formats(text: str, runtime: str) -> None:
    found = container_from_cgroup(text)
    assert found is not None
    assert found.id == CID
    assert found.runtime == runtime


@pytest.mark.parametrize("text", [
    "0::/user.slice/user-0.slice/session-3.scope\n",
    "12:pids:/\n1:name=systemd:/init.scope\n",
    f"0::/docker/{CID[:40]}\n",  # not a full id
    "garbage without colons\n",
    "",
])
def test_host_processes_have_no_container(text: str) -> None:
    assert container_from_cgroup(text) is None


def test_this_process_and_a_missing_pid() -> None:
    assert container_of_pid(2**22 + 12345) is None  # above pid_max: never exists
    own = container_of_pid(os.getpid())
    assert own is None or len(own.id) == 64
