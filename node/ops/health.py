"""The health checks behind /healthz (served by node/web/server.py) and the systemd watchdog."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CheckResult = tuple[bool, str]
Checks = Callable[[], Mapping[str, CheckResult]]


def health_report(checks: Checks) -> tuple[bool, dict[str, Any]]:
    """Run the checks and build the /healthz document; a raising check makes the node unhealthy, not crashed."""
    try:
        results = dict(checks())
    # Reported as the health status itself.
    except Exception as exc:
        log.warning("health checks raised", exc_info=True)
        return False, {"status": "error", "checks": {}, "error": f"{type(exc).__name__}: {exc}"}
    doc_checks = {name: {"ok": bool(ok), "detail": str(detail)} for name, (ok, detail) in sorted(results.items())}
    healthy = all(entry["ok"] for entry in doc_checks.values())
    return healthy, {"status": "ok" if healthy else "unhealthy", "checks": doc_checks}


def combine_checks(named: Mapping[str, Callable[[], CheckResult]]) -> Checks:
    """One Checks callable from named check functions; a check that raises fails alone with its exception."""

    def run() -> dict[str, CheckResult]:
        results: dict[str, CheckResult] = {}
        for name, check in named.items():
            try:
                results[name] = check()
            # One broken check must not hide the others.
            except Exception as exc:
                log.warning("health check %s raised", name, exc_info=True)
                results[name] = (False, f"check raised {type(exc).__name__}: {exc}")
        return results

    return run


def tcp_listening_check(host: str, port: int, timeout: float = 1.0) -> CheckResult:
    """Healthy when a TCP connection to host:port is accepted (the listener exists and its accept loop runs).

    The probe is a real connection: aimed at our own SCP with security.allowed_hosts not covering the
    probing address, it would be refused and logged at every probe; an in-process check suits that case.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return False, f"nothing accepts connections on {host}:{port}: {exc.strerror or exc}"
    return True, f"listening on {host}:{port}"


def sqlite_writable_check(db_path: str | Path, timeout: float = 2.0) -> CheckResult:
    """Healthy when the existing database at db_path can take a write lock within timeout seconds (the detail names
    the file, not its folder: /healthz answers without a login).

    Opens in mode=rw so a missing database is reported instead of silently created, and rolls the empty
    transaction back so the check writes nothing.
    """
    path = Path(db_path)
    if not path.is_file():
        return False, f"database {path.name} does not exist"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        return False, f"cannot open database {path.name}: {exc}"
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return False, f"database {path.name} is not writable: {exc}"
    finally:
        conn.close()
    return True, f"database {path.name} writable"


def postgres_check(url: str, timeout: float = 2.0) -> CheckResult:
    """Healthy when a new connection to the PostgreSQL state database answers within timeout."""
    from node.store.postgres import probe

    problem = probe(url, timeout)
    return (False, f"PostgreSQL state database not usable: {problem}") if problem else (
        True, "PostgreSQL state database reachable")


class Heartbeat:
    """Liveness of a loop (e.g. the scheduler): the loop calls beat(), the health check asks check()."""

    def __init__(self, name: str, max_age_s: float) -> None:
        self.name = name
        self.max_age_s = max_age_s
        self._last: float | None = None
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self._last = time.monotonic()

    def check(self) -> CheckResult:
        with self._lock:
            last = self._last
        if last is None:
            return False, f"{self.name} has not started"
        age = time.monotonic() - last
        if age > self.max_age_s:
            return False, f"{self.name} silent for {age:.0f} s (limit {self.max_age_s:g} s)"
        return True, f"{self.name} alive ({age:.0f} s ago)"
