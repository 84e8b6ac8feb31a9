"""Wires the node's parts into metrics and health checks (collectors read state; they never change it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from node.ops.health import CheckResult, Heartbeat, postgres_check, sqlite_writable_check
from node.ops.metrics import Metrics
from node.pull.scheduler import Scheduler
from node.receive.diskguard import DiskGuard
from node.receive.scp import Receiver
from node.store import state as study_state
from node.store.store import Store


class NodeGauges:
    """Refreshes the gauges that describe current state (the SCP counts its own events as they happen)."""

    def __init__(self, scp: Receiver, disk_guard: DiskGuard, store: Store, scheduler: Scheduler) -> None:
        self.scp = scp
        self.disk_guard = disk_guard
        self.store = store
        self.scheduler = scheduler

    def __call__(self, metrics: Metrics) -> None:
        metrics.set("dicomnode_associations_active", self.scp.active_associations())
        guard = self.disk_guard
        tripped = guard.tripped()
        metrics.set("dicomnode_disk_guard_tripped", 1.0 if tripped else 0.0)
        metrics.set("dicomnode_disk_free_bytes", float(guard.free_bytes))
        for state, count in study_state.counts(self.store).items():
            metrics.set("dicomnode_studies", float(count), state=state)
        for state, count in self.scheduler.counts_by_state().items():
            metrics.set("dicomnode_requests", float(count), state=state)


def health_checks(
    scp: Receiver, disk_guard: DiskGuard, database: Path, heartbeat: Heartbeat, database_url: str | None = None
) -> dict[str, Callable[[], CheckResult]]:
    """The /healthz checks of the node's resources: SCP listening, database writable, disk below the guard, main
    loop alive. The background parts (scheduler, inbox, completion, processing, ...) add theirs (Node.loop_checks)."""

    def listening() -> CheckResult:
        address = scp.address
        if address is None:
            return False, "not listening"
        return True, f"listening on {address[0]}:{address[1]}"

    def disk() -> CheckResult:
        if disk_guard.tripped():
            return False, f"{disk_guard.used_pct:.1f}% used: above the high-water mark, C-STORE refused"
        return True, f"{disk_guard.used_pct:.1f}% used, {disk_guard.free_bytes} bytes free"

    checks = {
        "scp": listening,
        "database": (lambda: postgres_check(database_url)) if database_url else (lambda: sqlite_writable_check(database)),
        "disk": disk,
        "main_loop": heartbeat.check,
    }
    return checks
