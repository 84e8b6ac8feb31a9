"""The node's metrics: one declared table, kept and rendered by prometheus_client (text format 0.0.4)."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, generate_latest

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


class Metrics:
    """The metrics declared in METRICS (or a table given for tests), in a prometheus_client registry of their own.

    Using an undeclared name or the wrong labels raises ValueError: that is a programming error, caught by the
    first test that exercises the call site (prometheus_client itself would accept a gauge set on a counter's name
    typo by creating nothing, or fail late).
    """

    def __init__(self, specs: Iterable[MetricSpec] = METRICS) -> None:
        # One series per counter, not a second `_created` one per label set: scrapers here never use it.
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self._specs: dict[str, MetricSpec] = {}
        self._metrics: dict[str, Any] = {}
        kinds = {_C: Counter, _G: Gauge, _S: Summary}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"metric {spec.name!r} declared twice")
            self._specs[spec.name] = spec
            self._metrics[spec.name] = kinds[spec.type](spec.name, spec.help, spec.labels, registry=self.registry)
        self._collectors: list[Callable[[Metrics], None]] = []
        self._lock = threading.Lock()

    def _child(self, name: str, labels: dict[str, str], *allowed: MetricType) -> Any:
        spec = self._spec(name, *allowed)
        if set(labels) != set(spec.labels):
            raise ValueError(f"metric {spec.name} takes labels {sorted(spec.labels)}, got {sorted(labels)}")
        metric = self._metrics[name]
        return metric.labels(**{k: str(v) for k, v in labels.items()}) if spec.labels else metric

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add value to a counter (value >= 0) or a gauge (any sign)."""
        spec = self._spec(name, _C, _G)
        if spec.type is _C and value < 0:
            raise ValueError(f"counter {name} cannot decrease (inc by {value})")
        self._child(name, labels, _C, _G).inc(value)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        self._child(name, labels, _G).set(float(value))

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Record one observation in a summary (exported as _count and _sum)."""
        self._child(name, labels, _S).observe(seconds)

    def get(self, name: str, **labels: str) -> float:
        """Current value (a summary's sum); 0 for a label set never touched."""
        spec = self._spec(name, _C, _G, _S)
        self._check_labels(spec, labels)
        sample = f"{name.removesuffix('_total')}_total" if spec.type is _C else f"{name}_sum" if spec.type is _S else name
        value = self.registry.get_sample_value(sample, {k: str(v) for k, v in labels.items()})
        return float(value or 0.0)

    def count(self, name: str, **labels: str) -> int:
        """Number of observations of a summary."""
        spec = self._spec(name, _S)
        self._check_labels(spec, labels)
        return int(self.registry.get_sample_value(f"{name}_count", {k: str(v) for k, v in labels.items()}) or 0)

    def add_collector(self, fn: Callable[[Metrics], None]) -> None:
        """Register fn(metrics), called before each render to refresh gauges that are read, not counted."""
        with self._lock:
            self._collectors.append(fn)

    def render(self) -> str:
        """The whole registry in Prometheus text format 0.0.4 (prometheus_client's exposition)."""
        with self._lock:
            collectors = list(self._collectors)
        for fn in collectors:
            try:
                fn(self)
            # A broken collector must not take the scrape down.
            except Exception:
                log.warning("metrics collector %r failed", fn, exc_info=True)
        return generate_latest(self.registry).decode("utf-8")

    def _spec(self, name: str, *allowed: MetricType) -> MetricSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise ValueError(f"unknown metric {name!r}: declare it in node.metrics.METRICS")
        if spec.type not in allowed:
            raise ValueError(f"metric {name} is a {spec.type.value}, not a {'/'.join(t.value for t in allowed)}")
        return spec

    @staticmethod
    def _check_labels(spec: MetricSpec, labels: dict[str, str]) -> None:
        if set(labels) != set(spec.labels):
            raise ValueError(f"metric {spec.name} takes labels {sorted(spec.labels)}, got {sorted(labels)}")
