"""In-process metrics registry rendered in the Prometheus text exposition format 0.0.4."""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class MetricType(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    SUMMARY = "summary"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


_C, _G, _S = MetricType.COUNTER, MetricType.GAUGE, MetricType.SUMMARY

# The one table of what the node exports. Label values must come from bounded sets (configured AE titles,
# status codes, state names): a UID or a file name as a label would grow the registry without limit.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("dicomnode_up", _G, "1 while the node runs."),
    MetricSpec("dicomnode_instances_received_total", _C, "Instances stored and acknowledged.", ("calling_ae",)),
    MetricSpec("dicomnode_bytes_received_total", _C, "Bytes of instances stored and acknowledged."),
    MetricSpec("dicomnode_associations_total", _C, "Association requests by result.", ("result",)),
    MetricSpec("dicomnode_associations_active", _G, "Associations currently open."),
    MetricSpec("dicomnode_rejects_total", _C, "Associations or instances refused, by reason.", ("reason",)),
    MetricSpec("dicomnode_store_failures_total", _C, "C-STORE requests answered with a failure status.", ("status",)),
    MetricSpec("dicomnode_moves_total", _C, "C-MOVE requests finished, by outcome.", ("outcome",)),
    MetricSpec("dicomnode_requests", _G, "Request files by state (queue depth).", ("state",)),
    MetricSpec("dicomnode_studies", _G, "Studies by state.", ("state",)),
    MetricSpec("dicomnode_processing_seconds", _S, "Time to turn a complete study into outputs."),
    MetricSpec("dicomnode_disk_free_bytes", _G, "Bytes available to the node on the data file system."),
    MetricSpec("dicomnode_disk_guard_tripped", _G, "1 while disk usage is above the high-water mark."),
    MetricSpec("dicomnode_config_reloads_total", _C, "Configuration reloads (SIGHUP), by result.", ("result",)),
)

LabelKey = tuple[tuple[str, str], ...]


class Metrics:
    """Thread-safe registry of the metrics declared in METRICS (or a table given for tests).

    Using an undeclared name or the wrong labels raises ValueError: that is a programming error,
    caught by the first test that exercises the call site.
    """

    def __init__(self, specs: Iterable[MetricSpec] = METRICS) -> None:
        self._specs: dict[str, MetricSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"metric {spec.name!r} declared twice")
            self._specs[spec.name] = spec
        self._values: dict[str, dict[LabelKey, float]] = {name: {} for name in self._specs}
        self._counts: dict[str, dict[LabelKey, int]] = {name: {} for name in self._specs}
        self._collectors: list[Callable[[Metrics], None]] = []
        self._lock = threading.Lock()

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add value to a counter (value >= 0) or a gauge (any sign)."""
        spec = self._spec(name, _C, _G)
        if spec.type is _C and value < 0:
            raise ValueError(f"counter {name} cannot decrease (inc by {value})")
        key = self._key(spec, labels)
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        spec = self._spec(name, _G)
        key = self._key(spec, labels)
        with self._lock:
            self._values[name][key] = float(value)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Record one observation in a summary (exported as _count and _sum)."""
        spec = self._spec(name, _S)
        key = self._key(spec, labels)
        with self._lock:
            self._values[name][key] = self._values[name].get(key, 0.0) + seconds
            self._counts[name][key] = self._counts[name].get(key, 0) + 1

    def get(self, name: str, **labels: str) -> float:
        """Current value (a summary's sum); 0 for a label set never touched."""
        spec = self._spec(name, _C, _G, _S)
        key = self._key(spec, labels)
        with self._lock:
            return self._values[name].get(key, 0.0)

    def count(self, name: str, **labels: str) -> int:
        """Number of observations of a summary."""
        spec = self._spec(name, _S)
        key = self._key(spec, labels)
        with self._lock:
            return self._counts[name].get(key, 0)

    def add_collector(self, fn: Callable[[Metrics], None]) -> None:
        """Register fn(metrics), called before each render to refresh gauges that are read, not counted."""
        with self._lock:
            self._collectors.append(fn)

    def render(self) -> str:
        """The whole registry in Prometheus text format 0.0.4, sorted by name then labels."""
        with self._lock:
            collectors = list(self._collectors)
        for fn in collectors:
            try:
                fn(self)
            # A broken collector must not take the scrape down.
            except Exception:
                log.warning("metrics collector %r failed", fn, exc_info=True)
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._specs):
                spec = self._specs[name]
                lines.append(f"# HELP {name} {_escape_help(spec.help)}")
                lines.append(f"# TYPE {name} {spec.type.value}")
                values = self._values[name]
                keys = sorted(values) if values or spec.labels else [()]
                for key in keys:
                    labels = _render_labels(key)
                    if spec.type is _S:
                        lines.append(f"{name}_count{labels} {self._counts[name].get(key, 0)}")
                        lines.append(f"{name}_sum{labels} {_format_value(values.get(key, 0.0))}")
                    else:
                        lines.append(f"{name}{labels} {_format_value(values.get(key, 0.0))}")
        return "\n".join(lines) + "\n"

    def _spec(self, name: str, *allowed: MetricType) -> MetricSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise ValueError(f"unknown metric {name!r}: declare it in node.metrics.METRICS")
        if spec.type not in allowed:
            raise ValueError(f"metric {name} is a {spec.type.value}, not a {'/'.join(t.value for t in allowed)}")
        return spec

    @staticmethod
    def _key(spec: MetricSpec, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(spec.labels):
            raise ValueError(f"metric {spec.name} takes labels {sorted(spec.labels)}, got {sorted(labels)}")
        return tuple((label, str(labels[label])) for label in spec.labels)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render_labels(key: LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{label}="{_escape_label_value(value)}"' for label, value in key) + "}"


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
