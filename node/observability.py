"""Wires the node's state into metrics and health checks (collectors read state; they never change it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from node.health import CheckResult, Heartbeat, sqlite_writable_check
from node.metrics import Metrics

if TYPE_CHECKING:
    from node.app import Node


class ScpCounterBridge:
    """Turns the SCP's cumulative counters into Prometheus counter increments at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._seen: dict[tuple[str, str], float] = {}

    def _advance(self, metrics: Metrics, name: str, value: float, **labels: str) -> None:
        key = (name, repr(sorted(labels.items())))
        delta = value - self._seen.get(key, 0.0)
        if delta > 0:
            metrics.inc(name, delta, **labels)
            self._seen[key] = value

    def __call__(self, metrics: Metrics) -> None:
        stats = self.node.scp.stats
        with stats.lock:
            by_ae = dict(stats.by_calling_ae)
            total_bytes = stats.bytes
            accepted = stats.accepted
            rejected = dict(stats.rejected)
            failures = dict(stats.store_failures)
        for ae, count in by_ae.items():
            self._advance(metrics, "dicomnode_instances_received_total", count, calling_ae=ae)
        self._advance(metrics, "dicomnode_bytes_received_total", total_bytes)
        self._advance(metrics, "dicomnode_associations_total", accepted, result="accepted")
        self._advance(metrics, "dicomnode_associations_total", rejected.get("association", 0), result="rejected")
        for reason, count in rejected.items():
            self._advance(metrics, "dicomnode_rejects_total", count, reason=reason)
        for status, count in failures.items():
            self._advance(metrics, "dicomnode_store_failures_total", count, status=f"0x{status:04X}")
        metrics.set("dicomnode_associations_active", self.node.scp.active_associations())
        guard = self.node.disk_guard
        tripped = guard.tripped()
        metrics.set("dicomnode_disk_guard_tripped", 1.0 if tripped else 0.0)
        metrics.set("dicomnode_disk_free_bytes", float(guard.free_bytes))
        for state, count in self.node.store.query("SELECT state, COUNT(*) FROM studies GROUP BY state"):
            metrics.set("dicomnode_studies", float(count), state=str(state))


def health_checks(node: Node, heartbeat: Heartbeat) -> dict[str, Callable[[], CheckResult]]:
    """The /healthz checks: SCP listening, database writable, disk below the guard, main loop alive."""

    def scp() -> CheckResult:
        address = node.scp.address
        if address is None:
            return False, "not listening"
        return True, f"listening on {address[0]}:{address[1]}"

    def disk() -> CheckResult:
        guard = node.disk_guard
        if guard.tripped():
            return False, f"{guard.used_pct:.1f}% used: above the high-water mark, C-STORE refused"
        return True, f"{guard.used_pct:.1f}% used, {guard.free_bytes} bytes free"

    return {
        "scp": scp,
        "database": lambda: sqlite_writable_check(node.config.paths.database),
        "disk": disk,
        "main_loop": heartbeat.check,
    }
