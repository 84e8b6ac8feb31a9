"""Loopback HTTP endpoints /healthz and /metrics, and the pure health checks behind them."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from node.ops.metrics import Metrics

log = logging.getLogger(__name__)

CheckResult = tuple[bool, str]
Checks = Callable[[], Mapping[str, CheckResult]]

# A scraper or probe needs a few hundred bytes and milliseconds: anything slower is stuck or hostile.
REQUEST_TIMEOUT_S = 5.0
MAX_CONCURRENT_REQUESTS = 8


class HealthServer:
    """Serves GET /healthz (200 or 503 + JSON) and GET /metrics (Prometheus text) from a daemon thread."""

    def __init__(
        self,
        bind: str,
        port: int,
        checks: Checks,
        metrics: Metrics,
        *,
        allow_remote: bool = False,
        poll_interval: float = 0.5,
    ) -> None:
        if not allow_remote and not _is_loopback(bind):
            raise ValueError(
                f"health/metrics bind address {bind!r} is not a loopback address; the endpoints have no "
                "authentication, so bind 127.0.0.1 or ::1 (or allow remote access explicitly)"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"health/metrics port {port} is not in 0..65535")
        self.bind = bind
        self._requested_port = port
        self._checks = checks
        self._metrics = metrics
        # How often the serving thread looks for a stop request: stop() may wait this long.
        self._poll_interval = poll_interval
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound (the ephemeral one when 0 was asked), or the requested one before start()."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a daemon thread; returns once the socket listens. Raises OSError if the bind fails."""
        if self._server is not None:
            raise RuntimeError("health server already started")
        server_cls = _Server6 if ":" in self.bind else _Server
        server = server_cls((self.bind, self._requested_port), _Handler)
        server.node_checks = self._checks
        server.node_metrics = self._metrics
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": self._poll_interval}, name="health-http", daemon=True
        )
        self._thread.start()
        log.info("health and metrics listening on http://%s:%d (/healthz, /metrics)", self.bind, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=REQUEST_TIMEOUT_S)
        self._server = self._thread = None
        log.info("health and metrics server stopped")

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    """Healthy when the existing database at db_path can take a write lock within timeout seconds.

    Opens in mode=rw so a missing database is reported instead of silently created, and rolls the empty
    transaction back so the check writes nothing.
    """
    path = Path(db_path)
    if not path.is_file():
        return False, f"database {path} does not exist"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        return False, f"cannot open database {path}: {exc}"
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return False, f"database {path} is not writable: {exc}"
    finally:
        conn.close()
    return True, f"database {path} writable"


def postgres_check(url: str, timeout: float = 2.0) -> CheckResult:
    """Healthy when a new connection to the PostgreSQL state database opens a transaction within timeout."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return False, f"PostgreSQL state database not usable: {str(exc).strip()[:300]}"
    return True, "PostgreSQL state database reachable"


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


def _is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    node_checks: Checks
    node_metrics: Metrics

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Each request gets a thread; past the cap, new connections are closed unanswered instead of piling up.
        if not self._slots.acquire(blocking=False):
            log.debug("health server busy: dropping a connection")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "dicom-node"
    sys_version = ""
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(explain)s\n"

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def __getattr__(self, name: str) -> Any:
        # http.server answers 501 to methods without a do_X handler; any other method here is a 405.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        # The request body is never read: the connection closes after the answer (HTTP/1.0).
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self._finish(b"405 method not allowed\n", "text/plain; charset=utf-8", send_body=True)

    def _dispatch(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            healthy, doc = health_report(self.server.node_checks)
            self.send_response(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE)
            body = (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8")
            self._finish(body, "application/json", send_body)
        elif path == "/metrics":
            try:
                body = self.server.node_metrics.render().encode("utf-8")
            # The scrape fails, the node does not.
            except Exception:
                log.exception("rendering metrics failed")
                self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR)
                return
            self.send_response(HTTPStatus.OK)
            self._finish(body, "text/plain; version=0.0.4; charset=utf-8", send_body)
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _finish(self, body: bytes, content_type: str, send_body: bool) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stock message echoes parts of the request line back; answer with the fixed phrase only.
        super().send_error(code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health http %s: %s", self.address_string(), format % args)
