"""Configuration: one TOML file, every key with an embedded default, validated at start.

Errors name the offending key (``engine.limits.max_depth: expected an integer >= 1``), so a
user can fix the file without reading code. Sections are plain frozen dataclasses; each
module reads only its own section.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from hullguard.engine.limits import ScanLimits
from hullguard.response.policy import PolicyConfig

DEFAULT_CONFIG_PATH = Path("/etc/hullguard/config.toml")
DEFAULT_STATE_DIR = Path("/var/lib/hullguard")
DEFAULT_RUN_DIR = Path("/run/hullguard")


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class EngineConfig:
    signature_dirs: tuple[str, ...] = ()
    builtin_signatures: bool = True
    clamd_socket: str = ""
    """Path of a clamd UNIX socket; empty disables the ClamAV backend."""
    clamd_timeout: float = 30.0
    limits: ScanLimits = ScanLimits()


@dataclass(frozen=True)
class ScanConfig:
    workers: int = 0
    """Parallel scan processes; 0 means one per core."""
    one_file_system: bool = False
    exclude: tuple[str, ...] = ()
    max_size: int = 0
    """Skip files larger than this many bytes (0: only the engine's limits apply)."""


@dataclass(frozen=True)
class RealtimeConfig:
    """The ``[realtime]`` section: what the fanotify monitor watches and how it answers."""

    enabled: bool = True
    host_paths: tuple[str, ...] = ()
    """Host paths whose whole filesystems are protected (``FAN_MARK_FILESYSTEM``); e.g. ``["/"]``."""
    containers: bool = True
    """Protect every Docker container (its overlay filesystem), including image build steps."""
    open_perm: bool = True
    """Scan on open (``FAN_OPEN_PERM``) as well as on execute (always) and after writes."""
    deadline: float = 2.0
    """Seconds within which every permission event is answered."""
    fail_closed: bool = False
    """Deny instead of allow when a scan misses the deadline or the agent is overloaded."""
    workers: int = 0
    """Scan worker processes; 0 means one per core (at least two)."""
    max_pending: int = 1024
    """Scans queued at most; beyond that events get the default answer at once."""
    hard_timeout: float = 60.0
    """A worker busy this long on one file is restarted."""
    cache_size: int = 65536
    """Clean verdicts remembered in user space (LRU)."""
    kernel_cache: bool = True
    """Cache clean verdicts in the kernel with fanotify ignore marks."""
    exclude_paths: tuple[str, ...] = ()
    """Glob patterns of paths (inside the container for container files) never scanned."""
    exclude_processes: tuple[str, ...] = ()
    """Glob patterns of executable paths whose accesses are never scanned."""
    exclude_users: tuple[str, ...] = ()
    """User names (or uid numbers) whose accesses are never scanned."""
    exclude_containers: tuple[str, ...] = ()
    """Glob patterns of container names never scanned."""
    exclude_images: tuple[str, ...] = ()
    """Glob patterns of image names (``NAME:TAG``) whose containers are never scanned."""
    audit: bool = False
    """Ask the kernel to write an audit record for every denial (``FAN_ENABLE_AUDIT``)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """``[schedule.jobs.NAME]`` tables: ``cron`` (5 fields), ``targets``, ``all_containers``, ``clean``.

    Jobs are a free-form table here (the generic loader has no list of tables) and are
    validated, with the offending key named, by :func:`hullguard.agent.schedule.parse_jobs`.
    """

    enabled: bool = True
    jobs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from hullguard.agent.schedule import parse_jobs

        parse_jobs(self)


@dataclass(frozen=True)
class ImagesConfig:
    """The ``[images]`` section: where image stores are, and the Docker deployment gate."""

    platform: str = ""
    """Platform picked from multi-platform images (``linux/arm64``); empty: the host's."""
    containerd_address: str = "/run/containerd/containerd.sock"
    containerd_root: str = "/var/lib/containerd"
    """Its content store is read directly when reachable, else through ``ctr content get``."""
    containerd_namespace: str = "default"
    podman_root: str = ""
    """containers-storage root for ``podman:`` targets; empty: podman's own default."""
    podman_runroot: str = ""
    gate: Literal["detect", "block", "off"] = "detect"
    """detect: scan images of new containers and record; block: also serve the authorization plugin."""
    plugin_name: str = "hullguard"
    """Name given to dockerd as ``--authorization-plugin=NAME``; socket /run/docker/plugins/NAME.sock."""
    plugin_dir: str = "/run/docker/plugins"
    gate_scan_timeout: float = 20.0
    """Seconds a create/start waits for the scan of an image not scanned yet (Docker waits ~30 s)."""
    gate_unscanned: Literal["scan", "deny", "allow"] = "scan"
    """An image not scanned yet: scan it within the timeout (then deny), deny at once, or allow."""


@dataclass(frozen=True)
class BehaviorConfig:
    """The ``[behavior]`` section: behaviour monitoring (hullguard.behavior.service).

    On by default: its default rules deny only high-confidence attacks (reverse shells, miners,
    escape primitives) and record the rest. Drift (programs written after the container started)
    and programs run from /tmp are recorded, not denied, because image builds and some
    workloads do both on purpose; deny them per rule in ``[behavior.responses]``.
    """

    enabled: bool = True
    default_rules: bool = True
    """Load the rule set shipped in the package before ``rules_files``."""
    rules_files: tuple[str, ...] = ()
    """Extra rule files, loaded in order; later ones override earlier ones."""
    responses: dict[str, Any] = field(default_factory=dict)
    """Per-rule responses, e.g. ``"Terminal shell in container" = ["record", "kill"]``."""
    host_processes: bool = False
    """Also evaluate processes of the host (by default only processes in containers)."""
    file_events: bool = True
    """Watch sensitive directories of containers (creation, writes, symlinks, /etc/shadow reads)."""
    record_events: str = ""
    """Append every container event as a JSON line to this file (replay with ``hullguard rules test``)."""
    queue_size: int = 65536


@dataclass(frozen=True)
class Config:
    state_dir: str = str(DEFAULT_STATE_DIR)
    run_dir: str = str(DEFAULT_RUN_DIR)
    engine: EngineConfig = EngineConfig()
    scan: ScanConfig = ScanConfig()
    response: PolicyConfig = PolicyConfig()
    realtime: RealtimeConfig = RealtimeConfig()
    images: ImagesConfig = ImagesConfig()
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    extra: dict[str, Any] = field(default_factory=dict)
    """Sections this version does not model yet are kept here, never silently dropped."""

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def journal_path(self) -> Path:
        return self.state_path / "journal.db"


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return _build(hint, value, key)  # type: ignore[arg-type]
    if isinstance(hint, type) and issubclass(hint, Enum):
        choices = [m.value for m in hint]
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return hint(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: expected an integer >= 0, got {value}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: expected a number >= 0, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return tuple(value)
    if origin is dict:
        return dict(value)
    args = get_args(hint)
    if args:  # Literal or union of plain types: accept any listed value
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    raise ConfigError(f"{key}: unsupported value {value!r}")


def _build(cls: type[Any], data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names or key == "extra":
            if cls is Config and isinstance(value, dict):
                extra[key] = value  # a section of a later feature
                continue
            raise ConfigError(f"{full}: unknown key")
        kwargs[key] = _convert(value, hints[key], full)
    if cls is Config:
        kwargs["extra"] = extra
    return cls(**kwargs)


def parse_config(data: dict[str, Any]) -> Config:
    result: Config = _build(Config, data, "")
    return result


def load_config(path: Path | None = None, state_dir: str | None = None) -> Config:
    """Load the configuration: ``path``, else ``$HULLGUARD_CONFIG``, else the default path.

    A missing default file means all defaults; a missing explicitly named file is an error.
    """
    explicit = path is not None or "HULLGUARD_CONFIG" in os.environ
    cfg_path = path or Path(os.environ.get("HULLGUARD_CONFIG", DEFAULT_CONFIG_PATH))
    data: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: invalid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{cfg_path}: cannot read: {exc.strerror}") from exc
    elif explicit:
        raise ConfigError(f"{cfg_path}: configuration file not found")
    config = parse_config(data)
    override = state_dir or os.environ.get("HULLGUARD_STATE_DIR")
    if override:
        config = replace(config, state_dir=override)
    return config
