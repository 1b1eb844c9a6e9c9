"""Images in containerd: ``containerd:NAME`` in a namespace (``default``; ``k8s.io`` on Kubernetes nodes).

The image name is resolved to its root descriptor with ``ctr images ls`` (containerd keeps
names in its metadata database, which only the daemon may read). The blobs are then read
straight from the content store directory (``ROOT/io.containerd.content.v1.content``) when
it is reachable: a plain sequential file read, as fast as the disk, with no process or gRPC
stream per blob, and safe because containerd only commits blobs whose digest it verified.
When the directory is not reachable (another root, a remote socket), each blob is streamed
from ``ctr content get`` instead. Either way nothing is copied to disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from hullguard.objects.images.blobstore import DirStore, scan_blob_image
from hullguard.objects.images.digest import Readable, check_digest
from hullguard.objects.images.manifest import Descriptor, ImageError, Platform
from hullguard.objects.images.model import ImageRef, ImageReport
from hullguard.objects.images.scanner import ImageScanner, MissingBlob
from hullguard.objects.uri import escape_text

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_ROOT = "/var/lib/containerd"
CONTENT_DIR = "io.containerd.content.v1.content"
CTR_TIMEOUT = 60.0


@dataclass(frozen=True)
class Containerd:
    address: str = DEFAULT_ADDRESS
    root: str = DEFAULT_ROOT
    namespace: str = "default"
    ctr: str = "ctr"

    def _cmd(self, *args: str) -> list[str]:
        exe = shutil.which(self.ctr) or self.ctr
        return [exe, "--address", self.address, "--namespace", self.namespace, *args]

    def _run(self, *args: str) -> str:
        try:
            proc = subprocess.run(self._cmd(*args), capture_output=True, timeout=CTR_TIMEOUT, check=False)
        except FileNotFoundError:
            raise ImageError(f"containerd: '{self.ctr}' is not installed (needed to resolve image names)") \
                from None
        except subprocess.TimeoutExpired:
            raise ImageError(f"containerd at {self.address}: no answer within {CTR_TIMEOUT:.0f} s") from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise ImageError(f"containerd at {escape_text(self.address)}: "
                             f"{escape_text(err[-1] if err else 'ctr failed')}")
        return proc.stdout.decode(errors="replace")

    def images(self) -> dict[str, Descriptor]:
        """Name -> root descriptor of every image in the namespace."""
        out: dict[str, Descriptor] = {}
        for line in self._run("images", "ls").splitlines()[1:]:
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                out[parts[0]] = Descriptor(parts[1], check_digest(parts[2]))
            except ValueError:
                continue
        return out

    def find(self, name: str) -> tuple[str, Descriptor]:
        images = self.images()
        for candidate in _candidates(name):
            if candidate in images:
                return candidate, images[candidate]
        by_digest = [(n, d) for n, d in images.items() if d.digest == name]
        if by_digest:
            return by_digest[0]
        known = ", ".join(sorted(images)[:10]) or "none"
        raise ImageError(f"containerd: no image {escape_text(name)} in namespace "
                         f"{escape_text(self.namespace)} (images: {known}); see --namespace")

    def store(self) -> ContainerdStore:
        return ContainerdStore(self)


def _candidates(name: str) -> list[str]:
    out = [name]
    if ":" not in name.rpartition("/")[2] and "@" not in name:
        out.append(name + ":latest")
    first = name.partition("/")[0]
    if "." not in first and ":" not in first and first != "localhost":
        for c in list(out):
            out += [f"docker.io/{c}", f"docker.io/library/{c}"]
    return out


class ContainerdStore:
    """containerd's content store: the directory when reachable, else ``ctr content get``."""

    trusted = True

    def __init__(self, cd: Containerd) -> None:
        self.cd = cd
        content = Path(cd.root) / CONTENT_DIR
        self.dir = DirStore(content, trusted=True) if (content / "blobs").is_dir() else None
        self._listed: set[str] | None = None

    @property
    def mode(self) -> str:
        return "content directory" if self.dir is not None else "ctr content get"

    def has_blob(self, digest: str) -> bool:
        if self.dir is not None:
            return self.dir.has_blob(digest)
        if self._listed is None:
            self._listed = set(self.cd._run("content", "ls", "--quiet").split())
        return digest in self._listed

    def open_blob(self, digest: str) -> AbstractContextManager[Readable]:
        if self.dir is not None:
            return self.dir.open_blob(digest)
        return self._ctr_get(digest)

    @contextmanager
    def _ctr_get(self, digest: str) -> Iterator[Readable]:
        check_digest(digest)
        proc = subprocess.Popen(self.cd._cmd("content", "get", digest), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=1 << 20)
        assert proc.stdout is not None
        try:
            yield proc.stdout
        finally:
            proc.stdout.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            if proc.returncode not in (0, None, -13) and "not found" in err:
                raise MissingBlob(f"blob {digest} is not in containerd's content store")


def scan_containerd(scanner: ImageScanner, name: str, *, cd: Containerd,
                    platform: Platform | None = None) -> ImageReport:
    if not os.path.exists(cd.address):
        raise ImageError(f"containerd: no socket at {escape_text(cd.address)} (is containerd running? "
                         "set images.containerd_address)")
    full, root = cd.find(name)
    ref = ImageRef("containerd", full, namespace=cd.namespace)
    return scan_blob_image(scanner, cd.store(), [root], ref, platform or Platform.host())
