"""Load and validate etc/node.yaml into the typed Config: every problem reported at once with its location."""

from __future__ import annotations

import copy
import ipaddress
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from node.config.model import (
    SCHEMA,
    CompletionSection,
    Config,
    ConfigError,
    HealthConfig,
    ImportConfig,
    LoggingConfig,
    NiftiOptions,
    NodeSection,
    Paths,
    PeerConfig,
    ProcessingConfig,
    RequestsConfig,
    RetentionConfig,
    SecurityConfig,
    StorageConfig,
    TimeWindow,
    TlsConfig,
    WebConfig,
)
from node.dicom.validators import ae_title_problem

DEFAULT_CONFIG = Path("etc/node.yaml")
ENV_PREFIX = "DICOMNODE__"
MAX_CONFIG_BYTES = 1_000_000


def _location(path: Iterator[Any] | Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _apply_defaults(schema: Mapping[str, Any], data: Any) -> None:
    """Fill schema defaults into data in place (objects only), recursing into known properties."""
    if not isinstance(data, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if key in data:
            _apply_defaults(sub, data[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in data.items():
            if key not in schema.get("properties", {}):
                _apply_defaults(extra, value)


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Apply DICOMNODE__SECTION__KEY=value overrides (values parsed as YAML scalars); return what changed."""
    applied = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        target = data
        for key in keys[:-1]:
            node = target.setdefault(key, {})
            if not isinstance(node, dict):
                break
            target = node
        else:
            target[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
            applied.append(".".join(keys))
    return applied


def _semantic_problems(data: Mapping[str, Any]) -> list[str]:
    problems = []
    node = data.get("node", {})
    if isinstance(node.get("ae_title"), str) and (p := ae_title_problem(node["ae_title"])):
        problems.append(f"At 'node.ae_title': {p}")
    for i, ae in enumerate(data.get("security", {}).get("allowed_calling_aes", [])):
        if isinstance(ae, str) and (p := ae_title_problem(ae)):
            problems.append(f"At 'security.allowed_calling_aes[{i}]': {p}")
    for i, host in enumerate(data.get("security", {}).get("allowed_hosts", [])):
        try:
            ipaddress.ip_network(str(host), strict=False)
        except ValueError:
            problems.append(f"At 'security.allowed_hosts[{i}]': {host!r} is not an IP address or CIDR network")
    for name, peer in (data.get("peers") or {}).items():
        if isinstance(peer, dict) and isinstance(peer.get("ae_title"), str) and (p := ae_title_problem(peer["ae_title"])):
            problems.append(f"At 'peers.{name}.ae_title': {p}")
    storage = data.get("storage", {})
    high, low = storage.get("disk_high_water_pct"), storage.get("disk_low_water_pct")
    if isinstance(high, int | float) and isinstance(low, int | float) and low > high:
        problems.append(f"At 'storage.disk_low_water_pct': {low} is above disk_high_water_pct {high}")
    tls = node.get("tls", {}) if isinstance(node, dict) else {}
    if isinstance(tls, dict) and tls.get("enabled"):
        for key in ("certificate", "private_key"):
            if not tls.get(key):
                problems.append(f"At 'node.tls.{key}': required when TLS is enabled")
        if tls.get("require_client_certificate") and not tls.get("ca_file"):
            problems.append("At 'node.tls.ca_file': required when require_client_certificate is true "
                            "(without it, any certificate of the system's public CAs would be accepted)")
    return problems


def validate(data: Any, source: str = "<config>") -> dict[str, Any]:
    """Validate a parsed config mapping; return it with defaults filled in or raise ConfigError with all problems."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"At '<top level>': expected a mapping of sections, got {type(data).__name__}"])
    schema = SCHEMA
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"At '{_location(err.absolute_path)}': {err.message}"
        for err in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    ]
    health = data.get("health")
    if isinstance(health, dict):  # keys that moved when the web server took over /healthz and /metrics
        problems += [f"At 'health.{key}': moved to 'web.{key}' (the web server serves /healthz and /metrics)"
                     for key in ("enabled", "bind", "port", "allow_remote") if key in health]
    if problems:
        raise ConfigError(source, problems)
    effective = copy.deepcopy(data)
    _apply_defaults(schema, effective)
    problems = _semantic_problems(effective)
    if problems:
        raise ConfigError(source, problems)
    return effective


def _typed(effective: dict[str, Any], source: str, base: Path) -> Config:
    n = effective["node"]
    tls = n["tls"]

    def opt_path(value: str | None) -> Path | None:
        return (base / value) if value else None

    node = NodeSection(
        ae_title=n["ae_title"],
        bind=n["bind"],
        port=n["port"],
        max_associations=n["max_associations"],
        max_pending_connections=n["max_pending_connections"],
        max_pdu=n["max_pdu"],
        acse_timeout_s=float(n["acse_timeout_s"]),
        dimse_timeout_s=float(n["dimse_timeout_s"]),
        network_timeout_s=float(n["network_timeout_s"]),
        drain_timeout_s=float(n["drain_timeout_s"]),
        max_instance_mb=n["max_instance_mb"],
        receiver_processes=n["receiver_processes"],
        tls=TlsConfig(
            enabled=tls["enabled"],
            certificate=opt_path(tls["certificate"]),
            private_key=opt_path(tls["private_key"]),
            ca_file=opt_path(tls["ca_file"]),
            require_client_certificate=tls["require_client_certificate"],
        ),
    )
    sec = effective["security"]
    security = SecurityConfig(
        allowed_calling_aes=tuple(a.strip() for a in sec["allowed_calling_aes"]),
        allowed_networks=tuple(ipaddress.ip_network(h, strict=False) for h in sec["allowed_hosts"]),
        check_called_ae=sec["check_called_ae"],
    )
    p = effective["paths"]
    paths = Paths(inbox=base / p["inbox"], outbox=base / p["outbox"], var=base / p["var"],
                  database_url=effective["database"]["url"])
    peers = {
        name: PeerConfig(
            name=name,
            ae_title=v["ae_title"],
            host=v["host"],
            port=v["port"],
            max_associations=v["max_associations"],
            max_moves=v["max_moves"],
            retrieve=v["retrieve"],
            timeout_s=float(v["timeout_s"]),
            dimse_timeout_s=float(v["dimse_timeout_s"]),
            max_find_results=v["max_find_results"],
            windows=tuple(
                TimeWindow(w["start"], w["end"], tuple(w.get("days", TimeWindow.days))) for w in v["windows"]
            ),
        )
        for name, v in effective["peers"].items()
    }
    s = effective["storage"]
    storage = StorageConfig(
        disk_high_water_pct=float(s["disk_high_water_pct"]),
        disk_low_water_pct=float(s["disk_low_water_pct"]),
        disk_check_interval_s=float(s["disk_check_interval_s"]),
        on_conflict=str(s["on_conflict"]),
    )
    lg = effective["logging"]
    pr = effective["processing"]
    return Config(
        source=source,
        node=node,
        security=security,
        paths=paths,
        peers=peers,
        storage=storage,
        requests=RequestsConfig(**{**effective["requests"],
                                   "original_keywords": tuple(effective["requests"]["original_keywords"])}),
        completion=CompletionSection(**{k: v for k, v in effective["completion"].items()}),
        processing=ProcessingConfig(
            workers=pr["workers"],
            outputs=tuple(pr["outputs"]),
            folder_template=pr["folder_template"],
            templates_dir=opt_path(pr["templates_dir"]),
            mr_clean_config=opt_path(pr["mr_clean_config"]),
            rescan_interval_s=float(pr["rescan_interval_s"]),
            max_attempts=int(pr["max_attempts"]),
            worker_memory_mb=pr["worker_memory_mb"],
            executor=pr["executor"],
            dask_scheduler=pr["dask"]["scheduler"],
            workbook_headers=pr["workbook_headers"],
            metadata_rows=pr["metadata_rows"],
        ),
        nifti=NiftiOptions(**effective["nifti"]),
        imports=ImportConfig(**effective["import"]),
        retention=RetentionConfig(**effective["retention"]),
        health=HealthConfig(**effective["health"]),
        web=WebConfig(**{**effective["web"], "users_file": opt_path(effective["web"]["users_file"])}),
        logging=LoggingConfig(level=lg["level"], pynetdicom_level=lg["pynetdicom_level"]),
        effective=effective,
    )


def parse(text: str, source: str = "<config>", environ: Mapping[str, str] | None = None, base: Path | None = None) -> Config:
    """Parse YAML text into a Config (env overrides applied); raise ConfigError listing every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        raise ConfigError(source, [f"At {where}: YAML syntax error: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if isinstance(data, dict) and environ is not None:
        apply_env_overrides(data, environ)
    effective = validate(data, source)
    try:
        config = _typed(effective, source, base if base is not None else Path.cwd())
    except ValueError as exc:  # NiftiOptions checks what the schema cannot (DICOM keywords in the name template)
        raise ConfigError(source, [f"At 'nifti': {exc}"]) from None
    problems = data_file_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def data_file_problems(config: Config) -> list[str]:
    """The tag templates and MR_clean rules the config points at (or the shipped ones), loaded and checked now,
    so `check-config` and start-up refuse a broken file instead of the first study that needs it."""
    from node.mr_clean.config import MrCleanConfigError
    from node.mr_clean.config import load_config as load_mr_clean
    from node.process.workbook.templates import TemplateError, load_templates

    problems = []
    p = config.processing
    try:
        load_templates(p.templates_dir)
    except (TemplateError, OSError) as exc:
        problems.append(f"At 'processing.templates_dir': {exc}")
    try:
        load_mr_clean(p.mr_clean_config)
    except (MrCleanConfigError, OSError) as exc:
        problems.append(f"At 'processing.mr_clean_config': {exc}")
    return problems


def load(path: Path | str = DEFAULT_CONFIG, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate a config file; relative paths inside resolve against the working directory."""
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(source, [f"At '<file>': {size} bytes is larger than the {MAX_CONFIG_BYTES} byte limit"])
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, ["At '<file>': file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(source, ["At '<file>': is a directory, not a file"]) from None
    except PermissionError:
        raise ConfigError(source, ["At '<file>': permission denied"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"At byte {exc.start}: not UTF-8 text"]) from None
    if "\x00" in text:
        raise ConfigError(source, ["At '<file>': contains NUL bytes (binary file?)"])
    return parse(text, source, os.environ if environ is None else environ)


def dump(config: Config) -> str:
    """The effective configuration as YAML, for check-config and the start-up log."""
    return yaml.safe_dump(config.effective, sort_keys=False, allow_unicode=True)
