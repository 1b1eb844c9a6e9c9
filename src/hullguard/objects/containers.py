"""A Docker container as trees to scan: its root filesystem and every mount it has.

What the host can reach, and how, decides the scope (and so what the policy may do):

* **running**: the overlay ``MergedDir`` is mounted on the host and shows the container's root
  exactly as the container sees it (without its mounts): scope ``container``, cleaned through
  that directory (a deleted image file becomes a whiteout; the image itself is never touched).
* **stopped**: nothing is mounted, and nothing is mounted by us either. The writable layer
  (``UpperDir``) is walked directly (scope ``container``); the image layers (``LowerDir``) are
  walked read-only as scope ``image`` (report only: writing there would change the image for
  every container using it), each named by its layer digest. Docker's ``-init`` layer holds
  only the empty files Docker creates (``/etc/hosts``...) and is left out.
* **bind mounts and named volumes** (``Mounts`` with a host ``Source``): scope ``volume``.
* **everything else in the container's mount namespace** (a tmpfs from ``--tmpfs``, ``/dev/shm``,
  a file system the container mounted itself), found in ``/proc/<pid>/mountinfo``: reachable
  only through ``/proc/<pid>/root``; scope ``container-private``: scanned, never removed.

A container controls what is *inside* its mounts, never where they are: so every tree whose
location the container could influence (bind mounts, private mounts) is *pinned* when the
targets are resolved — opened once as a directory fd (confined with ``openat2`` inside
``/proc/<pid>/root``, or with an ``O_NOFOLLOW`` walk from ``/``) and then walked as
``/proc/<our pid>/fd/<N>/.``. That path always names the very directory that was opened, so a
rename or a symlink swapped in later cannot redirect the scan; below it, :mod:`hostfs` never
follows a symlink. Pins are released with :func:`release_pins` after the scan.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from hullguard.objects import hostfs
from hullguard.objects.hostfs import WalkProblem
from hullguard.objects.safeopen import ProcRoot, open_beneath
from hullguard.objects.scanobject import ContainerRef, ObjectContext, Scope
from hullguard.objects.targets import TargetError, TreeTarget, register_source
from hullguard.objects.uri import ObjectURI, escape_text

if TYPE_CHECKING:  # the Docker SDK costs ~0.1 s to import; only container scans need it
    import docker

PSEUDO_FS = frozenset({
    "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs",
    "bpf", "fusectl", "configfs", "pstore", "hugetlbfs", "binfmt_misc", "autofs", "nsfs",
    "selinuxfs", "efivarfs", "rpc_pipefs",
})
"""Kernel interfaces, not storage: nothing to scan there."""
DOCKER_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
SYMLINK_REFUSED = ("the host path of this bind mount leads through a symbolic link, which is not followed "
                   "while the container is stopped (start it to scan what it mounts, or scan the real path)")
_OCTAL = re.compile(rb"\\([0-7]{3})")
_PINS: list[int] = []
_PIN_HOSTS: dict[bytes, bytes] = {}


class ContainerError(TargetError):
    """A container that cannot be scanned (not found, Docker not reachable); one line for the user."""


class MountKind(StrEnum):
    ROOT = "root"
    UPPER = "upper"
    IMAGE_LAYER = "image-layer"
    BIND = "bind"
    VOLUME = "volume"
    PRIVATE = "private"


@dataclass(frozen=True)
class ContainerMount:
    """One tree of a container: where it appears inside, and where the host has it."""

    kind: MountKind
    destination: str
    """Path inside the container where this tree appears (``/`` for the root and layers)."""
    source: str = ""
    """Host directory (or file, for a file bind mount); empty when only in the namespace."""
    name: str = ""
    """Volume name; layer digest for image layers; file system type for private mounts."""
    read_only: bool = False

    @property
    def scope(self) -> Scope:
        return {MountKind.ROOT: Scope.CONTAINER_LAYER, MountKind.UPPER: Scope.CONTAINER_LAYER,
                MountKind.IMAGE_LAYER: Scope.IMAGE, MountKind.BIND: Scope.VOLUME,
                MountKind.VOLUME: Scope.VOLUME, MountKind.PRIVATE: Scope.CONTAINER_PRIVATE}[self.kind]

    def describe(self) -> str:
        """What the journal shows as the mount a file lies on."""
        dest = escape_text(self.destination)
        if self.kind is MountKind.ROOT:
            return "container root (overlay, writable layer over the image)"
        if self.kind is MountKind.UPPER:
            return "container writable layer (container stopped)"
        if self.kind is MountKind.IMAGE_LAYER:
            return f"image layer {self.name or escape_text(self.source)} (container stopped)"
        if self.kind is MountKind.VOLUME:
            return f"volume {escape_text(self.name)} at {dest}"
        if self.kind is MountKind.BIND:
            return f"bind mount {escape_text(self.source)} at {dest}"
        return f"{escape_text(self.name) or 'mount'} at {dest} (only in the container's mount namespace)"


@dataclass(frozen=True)
class ContainerView:
    id: str
    name: str
    image: str
    image_id: str = ""
    running: bool = False
    pid: int = 0
    merged_dir: str = ""
    upper_dir: str = ""
    lower_dirs: tuple[str, ...] = ()
    mounts: tuple[ContainerMount, ...] = ()
    """Docker's bind mounts and volumes (private mounts are found at scan time)."""
    layer_ids: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    """overlay2 cache id -> layer diff id, for naming image layers."""

    @property
    def ref(self) -> ContainerRef:
        return ContainerRef(self.id, self.name, self.image)

    def uri(self, path: str | bytes = "") -> ObjectURI:
        return ObjectURI.docker(self.image, self.id, path)


# --- Docker API --------------------------------------------------------------------------------
def image_display(config_image: str, image_id: str) -> str:
    """``NAME:TAG`` for a reference (``:latest`` added); ids and digests unchanged."""
    ref = config_image or image_id
    if not ref or ref.startswith("sha256:") or "@" in ref:
        return ref
    return ref if ":" in ref.rsplit("/", 1)[-1] else ref + ":latest"


def view_from_attrs(attrs: dict[str, Any], layer_ids: dict[str, str] | None = None) -> ContainerView:
    """A :class:`ContainerView` from ``docker inspect`` output; missing parts become empty."""
    state = attrs.get("State") or {}
    data = (attrs.get("GraphDriver") or {}).get("Data") or {}
    mounts: list[ContainerMount] = []
    for m in attrs.get("Mounts") or ():
        kind = {"bind": MountKind.BIND, "volume": MountKind.VOLUME}.get(str(m.get("Type", "")))
        if kind is None:
            continue  # tmpfs, npipe...: found in the namespace at scan time
        mounts.append(ContainerMount(kind, str(m.get("Destination", "")), str(m.get("Source") or ""),
                                     str(m.get("Name") or ""), not bool(m.get("RW", True))))
    lower = tuple(p for p in str(data.get("LowerDir") or "").split(":") if p)
    running = bool(state.get("Running"))
    return ContainerView(
        id=str(attrs.get("Id", "")), name=str(attrs.get("Name", "")).lstrip("/"),
        image=image_display(str((attrs.get("Config") or {}).get("Image") or ""), str(attrs.get("Image", ""))),
        image_id=str(attrs.get("Image", "")), running=running, pid=int(state.get("Pid") or 0),
        merged_dir=str(data.get("MergedDir") or ""), upper_dir=str(data.get("UpperDir") or ""),
        lower_dirs=lower, mounts=tuple(mounts), layer_ids=dict(layer_ids or {}))


def client() -> docker.DockerClient:
    import docker

    try:
        c = docker.from_env(timeout=30)
        c.ping()
    except Exception as exc:  # the SDK raises several types for "no daemon"
        raise ContainerError(f"cannot reach the Docker daemon ({exc.__class__.__name__}); "
                             "is dockerd running and DOCKER_HOST right?") from None
    return c


def layer_ids(docker_root: str) -> dict[str, str]:
    """overlay2 directory id -> layer diff id, read from Docker's layer database (best effort)."""
    base = os.path.join(docker_root, "image", "overlay2", "layerdb", "sha256")
    out: dict[str, str] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            with open(os.path.join(base, name, "cache-id"), encoding="ascii") as f:
                cache = f.read().strip()
            with open(os.path.join(base, name, "diff"), encoding="ascii") as f:
                out[cache] = f.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
    return out


def _layer_map(c: docker.DockerClient) -> dict[str, str]:
    try:
        root = str(c.info().get("DockerRootDir") or "/var/lib/docker")
    except Exception:
        root = "/var/lib/docker"
    return layer_ids(root)


def inspect(c: docker.DockerClient, ref: str, layers: dict[str, str] | None = None) -> ContainerView:
    import docker.errors

    shown = escape_text(ref)
    try:
        attrs = c.api.inspect_container(ref)
    except docker.errors.NotFound:
        raise ContainerError(f"container:{shown}: no such container (see `docker ps -a`)") from None
    except docker.errors.APIError as exc:
        raise ContainerError(f"container:{shown}: Docker refused: {escape_text(str(exc.explanation))}") \
            from None
    driver = (attrs.get("GraphDriver") or {}).get("Name", "")
    if driver not in ("overlay2", "overlay"):
        raise ContainerError(f"container:{shown}: storage driver {escape_text(str(driver))!r} is not "
                             "supported (overlay2 only)")
    return view_from_attrs(attrs, _layer_map(c) if layers is None else layers)


def all_views(c: docker.DockerClient) -> list[ContainerView]:
    """Every container, running and stopped; one that disappears meanwhile is left out."""
    layers = _layer_map(c)
    out: list[ContainerView] = []
    for item in c.api.containers(all=True):
        try:
            out.append(inspect(c, str(item["Id"]), layers))
        except ContainerError:
            continue
    return out


# --- the container's own view --------------------------------------------------------------------
def _unescape(raw: bytes) -> bytes:
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw)


@dataclass(frozen=True)
class MountInfo:
    mount_point: bytes
    root: bytes
    fstype: str
    source: str


def parse_mountinfo(text: bytes) -> list[MountInfo]:
    out: list[MountInfo] = []
    for line in text.splitlines():
        left, sep, right = line.partition(b" - ")
        fields_l, fields_r = left.split(), right.split()
        if not sep or len(fields_l) < 5 or len(fields_r) < 2:
            continue
        out.append(MountInfo(_unescape(fields_l[4]), _unescape(fields_l[3]),
                             fields_r[0].decode(errors="replace"), fields_r[1].decode(errors="replace")))
    return out


def private_mounts(view: ContainerView, mountinfo: bytes) -> list[ContainerMount]:
    """Mounts in the container's namespace that the host cannot reach directly."""
    known = {os.fsencode(m.destination.rstrip("/") or "/") for m in view.mounts if m.source}
    out: list[ContainerMount] = []
    seen: set[bytes] = set()
    for mi in parse_mountinfo(mountinfo):
        mp = mi.mount_point
        if mp == b"/" or mp in known or mp in seen or mi.fstype in PSEUDO_FS:
            continue
        if mp.startswith((b"/proc/", b"/sys/")) or mp in (b"/proc", b"/sys"):
            continue
        if os.fsdecode(mp) in DOCKER_FILES:
            continue
        if any(mp.startswith(k + b"/") for k in known if k != b"/") and mi.fstype not in ("tmpfs", "ramfs"):
            continue  # a sub-mount of a volume seen from the host side anyway
        seen.add(mp)
        out.append(ContainerMount(MountKind.PRIVATE, os.fsdecode(mp), "", mi.fstype))
    return out


# --- pinning --------------------------------------------------------------------------------------
def _pin(fd: int, host_path: bytes = b"") -> bytes:
    """Keep ``fd`` open for the scan and return the path that names exactly that directory."""
    _PINS.append(fd)
    path = f"/proc/{os.getpid()}/fd/{fd}/.".encode()
    if host_path:
        _PIN_HOSTS[path] = host_path
    return path


def pinned_host_path(root: bytes) -> bytes:
    """The host path a pinned root stood for (itself when it is not a pin)."""
    return _PIN_HOSTS.get(root, root)


def release_pins() -> None:
    """Close every pinned directory (after a scan and its remediation are done)."""
    while _PINS:
        with contextlib.suppress(OSError):
            os.close(_PINS.pop())
    _PIN_HOSTS.clear()


def open_host_dir_nofollow(path: bytes) -> int:
    """An absolute host directory, every component opened with ``O_NOFOLLOW`` from ``/``."""
    root = hostfs.open_dir_at(None, b"/")
    try:
        return hostfs.open_dir_beneath(root, path.lstrip(b"/"))
    finally:
        os.close(root)


# --- targets ----------------------------------------------------------------------------------------
def _target(view: ContainerView, mount: ContainerMount, root: bytes, start: bytes = b"",
            prefix: bytes | None = None, uri_base: ObjectURI | None = None) -> TreeTarget:
    layer = mount.name if mount.kind is MountKind.IMAGE_LAYER else ""
    ctx = ObjectContext(mount.scope, view.ref, view.image, layer, mount.describe())
    dest = os.fsencode(mount.destination) or b"/"
    return TreeTarget(f"container:{view.name or view.id[:12]}", root, start,
                      uri_base or view.uri(), dest if prefix is None else prefix, ctx)


def _unreachable(view: ContainerView, mount: ContainerMount, exc: OSError, why: str = "") -> TreeTarget:
    """A tree refused at resolution: reported as not scanned (its path is never walked)."""
    target = _target(view, mount, os.fsencode(mount.source))
    detail = why or exc.strerror or str(exc)
    return replace(target, unreachable=WalkProblem(b"", hostfs.reason_for(exc), detail))


def _inside(view: ContainerView, mount: ContainerMount, proc: ProcRoot) -> TreeTarget:
    """What the running container really has mounted at the destination, confined to its root."""
    try:
        fd = open_beneath(proc.root_fd, os.fsencode(mount.destination), os.O_PATH | os.O_DIRECTORY)
    except OSError as inner:
        return _unreachable(view, mount, inner)
    return _target(view, mount, _pin(fd, os.fsencode(mount.source)))


def _bind_target(view: ContainerView, mount: ContainerMount, proc: ProcRoot | None) -> TreeTarget:
    """A bind mount, pinned; checked against the container's own view when it runs.

    The host path is opened with ``O_NOFOLLOW`` on every component. A symlink on the way
    (an admin's ``/srv -> /data/srv``, or one swapped in by whoever can write a parent
    directory) is never followed on the host's word: for a running container the tree is
    taken from the container's own mount namespace instead (what the kernel really mounted);
    for a stopped one nothing can vouch for where the link leads, so the mount is reported
    as not scanned. Any other failure is reported the same way, without walking the path.
    """
    source = os.fsencode(mount.source)
    parent, name = os.path.split(source)
    try:
        pfd = open_host_dir_nofollow(parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP and proc is not None:
            return _inside(view, mount, proc)
        return _unreachable(view, mount, exc, SYMLINK_REFUSED if exc.errno == errno.ELOOP else "")
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False) if name else os.fstat(pfd)
        if stat.S_ISLNK(st.st_mode):
            if proc is not None:
                return _inside(view, mount, proc)
            return _unreachable(view, mount, OSError(errno.ELOOP, "is a symbolic link", source),
                                SYMLINK_REFUSED)
        if not stat.S_ISDIR(st.st_mode):  # a file bind mount: scan that one file, named by host path
            same = os.path.basename(os.fsencode(mount.destination)) == name
            target = _target(view, mount, _pin(pfd, parent), name,
                             os.path.dirname(os.fsencode(mount.destination)) if same else parent,
                             None if same else ObjectURI.file(b""))
            pfd = -1  # pinned
            return target
        fd = hostfs.open_dir_at(pfd, name) if name else os.dup(pfd)
    except OSError as exc:
        return _unreachable(view, mount, exc)
    finally:
        if pfd >= 0:
            os.close(pfd)
    if proc is not None:  # the host directory must be what the container has mounted there
        try:
            inside = open_beneath(proc.root_fd, os.fsencode(mount.destination),
                                  os.O_PATH | os.O_DIRECTORY)
            try:
                a, b = os.fstat(fd), os.fstat(inside)
            finally:
                os.close(inside)
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                # the host path no longer leads to the mounted directory (an ancestor was
                # swapped): scan what the container really has there, confined to it
                os.close(fd)
                fd = open_beneath(proc.root_fd, os.fsencode(mount.destination), os.O_PATH | os.O_DIRECTORY)
        except OSError:
            pass  # the container may have stopped meanwhile: the pinned host directory stands
    return _target(view, mount, _pin(fd, source))


def targets_for(view: ContainerView, *, seen_layers: set[str] | None = None) -> list[TreeTarget]:
    """The trees of one container, in the order: root, mounts, private mounts."""
    out: list[TreeTarget] = []
    proc: ProcRoot | None = None
    if view.running and view.pid > 0:
        try:
            proc = ProcRoot.open(view.pid, expect_in_cgroup=view.id)
        except OSError:
            proc = None  # stopped between inspect and now: its host-side trees still scan
    try:
        if proc is not None and view.merged_dir:
            out.append(_target(view, ContainerMount(MountKind.ROOT, "/", view.merged_dir),
                               os.fsencode(view.merged_dir), prefix=b"/"))
        else:
            if view.upper_dir:
                out.append(_target(view, ContainerMount(MountKind.UPPER, "/", view.upper_dir),
                                   os.fsencode(view.upper_dir), prefix=b"/"))
            for lower in view.lower_dirs:
                cache = os.path.basename(os.path.dirname(lower))
                if cache.endswith("-init"):
                    continue
                if seen_layers is not None:
                    if lower in seen_layers:
                        continue
                    seen_layers.add(lower)
                mount = ContainerMount(MountKind.IMAGE_LAYER, "/", lower, view.layer_ids.get(cache, ""),
                                       read_only=True)
                out.append(_target(view, mount, os.fsencode(lower), prefix=b"/"))
        for mount in view.mounts:
            if not mount.source:
                continue
            if mount.kind is MountKind.BIND:
                out.append(_bind_target(view, mount, proc))
            else:
                out.append(_target(view, mount, os.fsencode(mount.source)))
        if proc is not None:
            for mount in private_mounts(view, proc.mountinfo):
                try:
                    fd = open_beneath(proc.root_fd, os.fsencode(mount.destination),
                                      os.O_PATH | os.O_DIRECTORY)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # unmounted meanwhile: nothing to report
                        out.append(_unreachable(view, mount, exc))
                    continue
                out.append(_target(view, mount, _pin(fd)))
    finally:
        if proc is not None:
            proc.close()
    return out


def resolve_container(ref: str) -> Sequence[TreeTarget]:
    """``container:NAME|ID``: the registered resolver."""
    c = client()
    try:
        return targets_for(inspect(c, ref))
    finally:
        c.close()


def resolve_all_containers() -> list[TreeTarget]:
    """``--all-containers``: every container, running and stopped (image layers once each)."""
    c = client()
    try:
        seen: set[str] = set()
        out: list[TreeTarget] = []
        for view in all_views(c):
            out.extend(targets_for(view, seen_layers=seen))
        return out
    finally:
        c.close()


def register_sources() -> None:
    register_source("container", resolve_container, "container:NAME|ID")


# --- restore ----------------------------------------------------------------------------------------
def restore_location(c: docker.DockerClient, container_id: str, container_path: str
                     ) -> tuple[bytes, bytes] | None:
    """Where a file at ``container_path`` of a container goes back today: (host root, relpath).

    The most specific mount wins (a volume at ``/data`` over the root). None when the container
    is gone, or the path lies only in its private namespace. A bind mount's directory is
    returned pinned (see :func:`_pin`; release with :func:`release_pins`), opened as in a scan:
    never through a symlink on the host path, so a parent swapped for a link cannot send the
    restored file elsewhere on the host. Raises :class:`ContainerError` when that directory
    cannot be reached safely (the message says to use ``--to``).
    """
    try:
        view = inspect(c, container_id, {})
    except ContainerError:
        return None
    path = "/" + container_path.strip("/")
    best: tuple[int, ContainerMount, bytes, bytes] | None = None
    for m in view.mounts:
        dest = "/" + m.destination.strip("/")
        if not m.source:
            continue
        if path == dest and m.kind is MountKind.BIND:
            src = os.fsencode(m.source)
            if not os.path.isdir(src):
                parent, name = os.path.split(src)
                best = (len(dest) + 1, m, parent, name)
                continue
        if path.startswith(dest.rstrip("/") + "/") and (best is None or len(dest) > best[0]):
            best = (len(dest), m, os.fsencode(m.source), os.fsencode(path[len(dest):].strip("/")))
    if best is not None:
        _, mount, root, rel = best
        if mount.kind is MountKind.BIND:
            return _pinned_bind_dir(view, mount, root), rel
        return root, rel
    layer = view.merged_dir if view.running else view.upper_dir
    if not layer:
        return None
    return os.fsencode(layer), os.fsencode(path.strip("/"))


def _pinned_bind_dir(view: ContainerView, mount: ContainerMount, host_dir: bytes) -> bytes:
    try:
        return _pin(open_host_dir_nofollow(host_dir), host_dir)
    except OSError as exc:
        if exc.errno == errno.ELOOP and view.running and view.pid > 0 \
                and host_dir == os.fsencode(mount.source):  # a directory bind mount: use what is mounted
            try:
                with ProcRoot.open(view.pid, expect_in_cgroup=view.id) as proc:
                    fd = open_beneath(proc.root_fd, os.fsencode(mount.destination), os.O_PATH | os.O_DIRECTORY)
                return _pin(fd, host_dir)
            except OSError as inner:
                exc = inner
        why = ("leads through a symbolic link (not followed)" if exc.errno == errno.ELOOP
               else f"cannot be opened ({exc.strerror})")
        raise ContainerError(f"cannot restore into the bind mount at {escape_text(mount.destination)}: "
                             f"its host path {escape_text(os.fsdecode(host_dir))} {why}; use --to PATH") from None
