"""The warm path of ``image:`` scans: every layer cached, answered without the Docker SDK.

The SDK import costs more than the rest of a warm scan, so the inspect goes over the daemon's
socket with the standard library (objects/images/dockerapi.py) and the SDK is loaded only
when a layer has to be read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from hullguard.objects.images import dockerapi

pytestmark = pytest.mark.integration

WARM = """
import json, sys
from hullguard.engine.engine import Engine
from hullguard.objects.images.api import ImageTarget, scan_image_target
from hullguard.objects.images.scanner import ImageScanner
from hullguard.objects.layercache import LayerCache
from pathlib import Path
cache = LayerCache.open(Path(sys.argv[1]))
report = scan_image_target(ImageTarget.parse("image:" + sys.argv[2]), ImageScanner(Engine.load(), cache))
print(json.dumps({"sdk": "docker" in sys.modules, "cached": report.cached_layers, "layers": len(report.layers),
                  "files": report.files}))
"""


def test_inspect_over_the_socket(docker_client: docker.DockerClient, busybox_image: str) -> None:
    attrs = dockerapi.inspect_image(busybox_image)
    assert attrs is not None
    assert attrs["Id"] == docker_client.images.get(busybox_image).id
    assert attrs["RootFS"]["Layers"]
    assert dockerapi.inspect_image("hullguard-test/no-such-image:never") is None
    assert dockerapi.inspect_image(busybox_image, "tcp://127.0.0.1:1") is None  # not a UNIX daemon: the SDK's job
    assert dockerapi.inspect_image(busybox_image, "unix:///nonexistent/docker.sock") is None


def test_warm_rescan_does_not_load_the_sdk(busybox_image: str, tmp_path: Path) -> None:
    def run() -> dict[str, object]:
        out = subprocess.run([sys.executable, "-c", WARM, str(tmp_path / "layers.db"), busybox_image],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        result: dict[str, object] = json.loads(out)
        return result

    cold = run()
    assert cold["sdk"] is True and cold["cached"] == 0 and cold["files"]
    warm = run()
    assert warm == {"sdk": False, "cached": warm["layers"], "layers": cold["layers"], "files": cold["files"]}
