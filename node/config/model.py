"""The typed configuration: one frozen dataclass per section of etc/node.yaml.

Defaults are read from the schema (schema.yaml), the one place they are written, so code that builds a
section by hand (tests, tools) gets the same values as a loaded file.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydicom.datadict import tag_for_keyword

SCHEMA: dict[str, Any] = yaml.safe_load((resources.files("node.config") / "schema.yaml").read_text(encoding="utf-8"))
_TEMPLATE_FIELD = re.compile(r"<([A-Za-z0-9]+)>")


def _default(section: str, key: str) -> Any:
    """The schema's default of section.key (a copy: defaults are never shared mutable values)."""
    node: Any = SCHEMA
    for part in section.split("."):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return copy.deepcopy(node["properties"][key]["default"])


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every problem with its location."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"Invalid configuration {self.source} ({len(self.problems)} problem(s)):"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = _default("node.tls", "enabled")
    certificate: Path | None = None
    private_key: Path | None = None
    ca_file: Path | None = None
    require_client_certificate: bool = _default("node.tls", "require_client_certificate")


@dataclass(frozen=True)
class NodeSection:
    ae_title: str
    bind: str
    port: int
    max_associations: int
    max_pending_connections: int
    max_pdu: int
    acse_timeout_s: float
    dimse_timeout_s: float
    network_timeout_s: float
    drain_timeout_s: float
    tls: TlsConfig
    max_instance_mb: float | None = 4096
    receiver_processes: int = 1


@dataclass(frozen=True)
class SecurityConfig:
    allowed_calling_aes: tuple[str, ...] = ()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    check_called_ae: bool = _default("security", "check_called_ae")


@dataclass(frozen=True)
class Paths:
    inbox: Path
    outbox: Path
    var: Path
    database_url: str | None = None  # `database.url`: None is SQLite at var/node.db
    tmp_dir: Path | None = None  # a receiver process's own folder under var/tmp (node/receive/pool.py)

    @property
    def store(self) -> Path:
        return self.var / "store"

    @property
    def tmp(self) -> Path:
        return self.tmp_dir if self.tmp_dir is not None else self.var / "tmp"

    @property
    def quarantine(self) -> Path:
        return self.var / "quarantine"

    @property
    def conflicts(self) -> Path:
        return self.var / "conflicts"

    @property
    def database(self) -> Path:
        return self.var / "node.db"


@dataclass(frozen=True)
class TimeWindow:
    start: str  # "HH:MM" local time
    end: str  # "HH:MM"; earlier than start means the next day
    days: tuple[str, ...] = tuple(
        SCHEMA["properties"]["peers"]["additionalProperties"]["properties"]["windows"]["items"]["properties"]["days"]["default"]
    )


@dataclass(frozen=True)
class PeerConfig:
    name: str
    ae_title: str
    host: str
    port: int
    max_associations: int = _default("peers.*", "max_associations")
    max_moves: int = _default("peers.*", "max_moves")
    retrieve: str = _default("peers.*", "retrieve")
    timeout_s: float = _default("peers.*", "timeout_s")
    dimse_timeout_s: float = _default("peers.*", "dimse_timeout_s")
    max_find_results: int | None = _default("peers.*", "max_find_results")
    windows: tuple[TimeWindow, ...] = ()


@dataclass(frozen=True)
class RequestsConfig:
    rescan_interval_s: float = _default("requests", "rescan_interval_s")
    settle_s: float = _default("requests", "settle_s")
    max_file_bytes: int = _default("requests", "max_file_bytes")
    max_attempts: int = _default("requests", "max_attempts")
    backoff_base_s: float = _default("requests", "backoff_base_s")
    backoff_max_s: float = _default("requests", "backoff_max_s")
    original_keywords: tuple[str, ...] = tuple(_default("requests", "original_keywords"))


@dataclass(frozen=True)
class StorageConfig:
    disk_high_water_pct: float = _default("storage", "disk_high_water_pct")
    disk_low_water_pct: float = _default("storage", "disk_low_water_pct")
    disk_check_interval_s: float = _default("storage", "disk_check_interval_s")
    on_conflict: str = _default("storage", "on_conflict")


@dataclass(frozen=True)
class CompletionSection:
    stable_age_s: float = _default("completion", "stable_age_s")
    max_wait_s: float = _default("completion", "max_wait_s")
    on_max_wait: str = _default("completion", "on_max_wait")
    check_interval_s: float = _default("completion", "check_interval_s")


@dataclass(frozen=True)
class ProcessingConfig:
    workers: int = _default("processing", "workers")
    outputs: tuple[str, ...] = tuple(_default("processing", "outputs"))
    folder_template: str = _default("processing", "folder_template")
    templates_dir: Path | None = None  # schema default null: the shipped templates
    mr_clean_config: Path | None = None  # schema default null: the shipped rules
    rescan_interval_s: float = _default("processing", "rescan_interval_s")
    max_attempts: int = _default("processing", "max_attempts")
    worker_memory_mb: int | None = None  # schema default null: no limit
    executor: str = _default("processing", "executor")
    dask_scheduler: str | None = None  # schema default null: a LocalCluster
    workbook_headers: str = _default("processing", "workbook_headers")
    metadata_rows: str = _default("processing", "metadata_rows")


@dataclass(frozen=True)
class ImportConfig:
    enabled: bool = _default("import", "enabled")
    settle_s: float = _default("import", "settle_s")
    rescan_interval_s: float = _default("import", "rescan_interval_s")
    delete_imported: bool = _default("import", "delete_imported")
    max_file_bytes: int = _default("import", "max_file_bytes")
    zip_max_total_bytes: int = _default("import", "zip_max_total_bytes")
    zip_max_members: int = _default("import", "zip_max_members")
    zip_max_ratio: float = _default("import", "zip_max_ratio")
    zip_ratio_floor_bytes: int = _default("import", "zip_ratio_floor_bytes")


@dataclass(frozen=True)
class RetentionConfig:
    store: str = _default("retention", "store")
    store_days: float = _default("retention", "store_days")
    outbox_max_gb: float | None = _default("retention", "outbox_max_gb")
    outbox_max_age_days: float | None = _default("retention", "outbox_max_age_days")
    interval_s: float = _default("retention", "interval_s")
    quarantine_days: float | None = _default("retention", "quarantine_days")
    quarantine_max_mb: float | None = _default("retention", "quarantine_max_mb")
    conflicts_days: float | None = _default("retention", "conflicts_days")
    requests_days: float | None = _default("retention", "requests_days")
    studies_days: float | None = _default("retention", "studies_days")


@dataclass(frozen=True)
class HealthConfig:
    stall_after_s: float = _default("health", "stall_after_s")


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = _default("web", "enabled")
    bind: str = _default("web", "bind")
    port: int = _default("web", "port")
    allow_remote: bool = _default("web", "allow_remote")
    users_file: Path | None = None  # null in the schema: <paths.var>/web/users.json
    session_hours: float = _default("web", "session_hours")
    secure_cookies: bool = _default("web", "secure_cookies")
    login_attempts: int = _default("web", "login_attempts")
    login_window_s: float = _default("web", "login_window_s")
    max_upload_mb: float = _default("web", "max_upload_mb")
    find_peer_timeout_s: float = _default("web", "find_peer_timeout_s")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _default("logging", "level")
    pynetdicom_level: str = _default("logging", "pynetdicom_level")


@dataclass(frozen=True)
class NiftiOptions:
    """The `nifti:` section: how series become NIfTI files (docs/nifti.md). Checked once, when the config loads."""

    name_template: str = _default("nifti", "name_template")
    on_geometry_error: Literal["skip", "write_with_warning"] = _default("nifti", "on_geometry_error")
    localizer: Literal["skip", "per_plane"] = _default("nifti", "localizer")
    single_slice: Literal["write_2d", "skip"] = _default("nifti", "single_slice")
    projection: Literal["write_2d", "skip"] = _default("nifti", "projection")
    resample_tilt: bool = _default("nifti", "resample_tilt")
    npz: bool = _default("nifti", "npz")
    compress: bool = _default("nifti", "compress")
    compression_level: int = _default("nifti", "compression_level")
    sidecar: bool = _default("nifti", "sidecar")
    max_name_len: int = _default("nifti", "max_name_len")
    position_tolerance_mm: float = _default("nifti", "position_tolerance_mm")
    spacing_tolerance: float = _default("nifti", "spacing_tolerance")
    max_series_mb: int = _default("nifti", "max_series_mb")
    invert_monochrome1: bool = _default("nifti", "invert_monochrome1")
    philips_scaling: Literal["precise", "display"] = _default("nifti", "philips_scaling")
    # Not a config key: false when a request asked for npz and not nifti (the arrays without the .nii files).
    write_nifti: bool = True

    def __post_init__(self) -> None:
        choices = {
            "on_geometry_error": ("skip", "write_with_warning"),
            "localizer": ("skip", "per_plane"),
            "single_slice": ("write_2d", "skip"),
            "projection": ("write_2d", "skip"),
            "philips_scaling": ("precise", "display"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"nifti.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for keyword in _TEMPLATE_FIELD.findall(self.name_template):
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"nifti.name_template: <{keyword}> is not a DICOM keyword")
        if not 8 <= self.max_name_len <= 200:
            raise ValueError(f"nifti.max_name_len: {self.max_name_len} is outside 8..200")
        if not (self.compression_level == -1 or 1 <= self.compression_level <= 9):
            raise ValueError(f"nifti.compression_level: {self.compression_level} is not -1 or 1..9")
        if self.position_tolerance_mm <= 0 or self.spacing_tolerance <= 0:
            raise ValueError("nifti tolerances must be positive")


@dataclass(frozen=True)
class Config:
    """The validated, typed configuration; `effective` is the plain dict with defaults filled in."""

    source: str
    node: NodeSection
    security: SecurityConfig
    paths: Paths
    peers: dict[str, PeerConfig]
    storage: StorageConfig
    requests: RequestsConfig
    completion: CompletionSection
    processing: ProcessingConfig
    nifti: NiftiOptions
    imports: ImportConfig  # the `import:` section (`import` is a Python keyword)
    retention: RetentionConfig
    health: HealthConfig
    logging: LoggingConfig
    effective: dict[str, Any] = field(repr=False)
    web: WebConfig = field(default_factory=WebConfig)

    @property
    def users_file(self) -> Path:
        return self.web.users_file or self.paths.var / "web" / "users.json"

    @property
    def default_peer(self) -> PeerConfig:
        """The first peer in the file: the default for requests that name none."""
        return next(iter(self.peers.values()))
