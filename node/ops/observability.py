"""Wires the node's state into metrics and health checks (collectors read state; they never change it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from node.ops.health import CheckResult, Heartbeat, sqlite_writable_check
from node.ops.metrics import Metrics
from node.store import state as study_state

if TYPE_CHECKING:
    from node.app import Node


class NodeGauges:
    """Refreshes the gauges that describe current state (the SCP counts its own events as they happen)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def __call__(self, metrics: Metrics) -> None:
        metrics.set("dicomnode_associations_active", self.node.scp.active_associations())
        guard = self.node.disk_guard
        tripped = guard.tripped()
        metrics.set("dicomnode_disk_guard_tripped", 1.0 if tripped else 0.0)
        metrics.set("dicomnode_disk_free_bytes", float(guard.free_bytes))
        for state, count in study_state.counts(self.node.store).items():
            metrics.set("dicomnode_studies", float(count), state=state)


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
