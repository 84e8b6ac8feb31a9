"""/healthz and /metrics of the web server on an ephemeral loopback port, with fake checks, and the pure check helpers."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import node.ops.health
from node.ops.health import (
    CheckResult,
    Heartbeat,
    combine_checks,
    sqlite_writable_check,
    tcp_listening_check,
)
from node.ops.metrics import Metrics
from node.ops.observability import health_checks
from node.receive.diskguard import DiskGuard
from node.web.server import WebServer
from tests.support.web import web_context


class Response:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, path: str, method: str = "GET", body: bytes | None = None) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics()
    m.set("dicomnode_up", 1)
    return m


@pytest.fixture
def serve(metrics: Metrics, tmp_path: Path) -> Iterator[Callable[[Callable[[], Mapping[str, CheckResult]]], WebServer]]:
    servers: list[WebServer] = []

    def start(checks: Callable[[], Mapping[str, CheckResult]]) -> WebServer:
        server = WebServer(web_context(tmp_path, checks, metrics), "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def all_ok() -> dict[str, CheckResult]:
    return {"scp": (True, "listening on 127.0.0.1:11112"), "db": (True, "writable")}


def test_healthz_is_200_with_every_check_when_all_pass(serve: Any) -> None:
    server = serve(all_ok)
    assert server.port > 0
    resp = request(server.port, "/healthz")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {
        "status": "ok",
        "checks": {
            "db": {"ok": True, "detail": "writable"},
            "scp": {"ok": True, "detail": "listening on 127.0.0.1:11112"},
        },
    }


def test_healthz_is_503_and_names_the_failing_check(serve: Any) -> None:
    server = serve(lambda: {**all_ok(), "scheduler": (False, "scheduler silent for 300 s")})
    resp = request(server.port, "/healthz?verbose=1")
    assert resp.status == 503
    doc = resp.json()
    assert doc["status"] == "unhealthy"
    assert doc["checks"]["scheduler"] == {"ok": False, "detail": "scheduler silent for 300 s"}
    assert doc["checks"]["scp"]["ok"] is True


def test_healthz_is_503_with_the_exception_text_when_the_checks_raise(serve: Any) -> None:
    def explode() -> dict[str, CheckResult]:
        raise RuntimeError("store not initialised")

    server = serve(explode)
    resp = request(server.port, "/healthz")
    assert resp.status == 503
    assert resp.json() == {"status": "error", "checks": {}, "error": "RuntimeError: store not initialised"}
    assert request(server.port, "/healthz").status == 503


def test_a_raising_check_fails_alone_when_checks_are_combined(serve: Any) -> None:
    def broken() -> CheckResult:
        raise OSError("no such table")

    server = serve(combine_checks({"scp": lambda: (True, "ok"), "db": broken}))
    doc = request(server.port, "/healthz").json()
    assert doc["checks"]["scp"]["ok"] is True
    assert doc["checks"]["db"] == {"ok": False, "detail": "check raised OSError: no such table"}


def test_healthz_turns_unhealthy_when_the_disk_guard_trips(serve: Any, tmp_path: Path) -> None:
    usage = {"free": 500}
    guard = DiskGuard(tmp_path, 90, 80, interval_s=0, usage=lambda _p: (1000, 1000 - usage["free"], usage["free"]))
    heartbeat = Heartbeat("main_loop", max_age_s=30)
    heartbeat.beat()
    checks = health_checks(_ListeningScp(), guard, tmp_path / "node.db", heartbeat)  # type: ignore[arg-type]
    server = serve(combine_checks({"disk": checks["disk"]}))
    healthy = request(server.port, "/healthz")
    assert healthy.status == 200
    assert healthy.json()["checks"]["disk"]["detail"].startswith("50.0% used")

    usage["free"] = 40
    tripped = request(server.port, "/healthz")
    assert tripped.status == 503
    assert tripped.json()["checks"]["disk"] == {
        "ok": False,
        "detail": "96.0% used: above the high-water mark, C-STORE refused",
    }

    usage["free"] = 300  # below the low-water mark: the guard releases
    assert request(server.port, "/healthz").status == 200


def test_metrics_serves_the_registry_as_prometheus_text(serve: Any, metrics: Metrics) -> None:
    server = serve(all_ok)
    metrics.inc("dicomnode_instances_received_total", 3, calling_ae="STORESCU")
    resp = request(server.port, "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = resp.body.decode()
    assert '\ndicomnode_instances_received_total{calling_ae="STORESCU"} 3.0\n' in text
    assert "\ndicomnode_up 1.0\n" in text
    metrics.inc("dicomnode_instances_received_total", calling_ae="STORESCU")
    assert b'{calling_ae="STORESCU"} 4.0\n' in request(server.port, "/metrics").body


def test_head_answers_headers_without_a_body(serve: Any) -> None:
    server = serve(all_ok)
    resp = request(server.port, "/healthz", method="HEAD")
    assert resp.status == 200
    assert int(resp.headers["content-length"]) > 0
    assert resp.body == b""


@pytest.mark.parametrize("path", ["/healthz/x", "/metrics.txt", "/../../etc/passwd", "/index.html"])
def test_other_paths_are_404_without_listing_anything(serve: Any, path: str) -> None:
    resp = request(serve(all_ok).port, path)
    assert resp.status == 404
    assert resp.json() == {"error": "not found"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_and_their_body_is_ignored(serve: Any, method: str) -> None:
    server = serve(all_ok)
    resp = request(server.port, "/metrics", method=method, body=b"x" * 10000)
    assert resp.status == 405
    assert sorted(resp.headers["allow"].split(", ")) == ["GET", "HEAD"]
    assert request(server.port, "/healthz").status == 200


def test_errors_never_reflect_the_request(serve: Any) -> None:
    port = serve(all_ok).port
    for line in (b"GET /<script>alert(1)</script> HTTP/1.0", b"GET /x HTTP/9.<script>", b"<script> / HTTP/1.0"):
        answer = raw_request(port, line + b"\r\n\r\n")
        assert b"40" in answer.split(b"\n", 1)[0], answer
        assert b"<script>" not in answer and b"alert" not in answer, answer


def test_a_client_that_sends_nothing_does_not_block_other_requests(serve: Any) -> None:
    server = serve(all_ok)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10):
        assert request(server.port, "/healthz").status == 200


def test_non_loopback_bind_is_refused_unless_explicitly_allowed(metrics: Metrics, tmp_path: Path) -> None:
    ctx = web_context(tmp_path, all_ok, metrics)
    for address in ("0.0.0.0", "192.0.2.7", "::", "health.example"):
        with pytest.raises(ValueError, match="not a loopback address"):
            WebServer(ctx, address, 0)
    WebServer(ctx, "0.0.0.0", 0, allow_remote=True)
    for address in ("127.0.0.1", "127.0.0.53", "::1", "localhost"):
        WebServer(ctx, address, 0)


def test_stop_closes_the_port(metrics: Metrics, tmp_path: Path) -> None:
    server = WebServer(web_context(tmp_path, all_ok, metrics), "127.0.0.1", 0)
    server.start()
    port = server.port
    assert request(port, "/healthz").status == 200
    server.stop()
    server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_tcp_listening_check_sees_a_listener_come_and_go() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        assert tcp_listening_check("127.0.0.1", port) == (True, f"listening on 127.0.0.1:{port}")
    finally:
        listener.close()
    ok, detail = tcp_listening_check("127.0.0.1", port)
    assert not ok
    assert detail.startswith(f"nothing accepts connections on 127.0.0.1:{port}")


def test_sqlite_check_passes_on_a_writable_database_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    assert sqlite_writable_check(db) == (True, f"database {db.name} writable")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_sqlite_check_reports_a_missing_database_without_creating_it(tmp_path: Path) -> None:
    db = tmp_path / "var" / "node.db"
    assert sqlite_writable_check(db) == (False, f"database {db.name} does not exist")
    assert not db.exists()


def test_sqlite_check_fails_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        ok, detail = sqlite_writable_check(db, timeout=0.05)
        assert not ok
        assert "database is locked" in detail
    finally:
        holder.close()
    assert sqlite_writable_check(db)[0]


def test_heartbeat_goes_stale_when_the_loop_stops_beating(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(node.ops.health.time, "monotonic", lambda: now[0])
    beat = Heartbeat("scheduler", max_age_s=120)
    assert beat.check() == (False, "scheduler has not started")
    beat.beat()
    now[0] += 60
    assert beat.check() == (True, "scheduler alive (60 s ago)")
    now[0] += 61
    assert beat.check() == (False, "scheduler silent for 121 s (limit 120 s)")


class _ListeningScp:
    address = ("127.0.0.1", 11112)


def test_the_listener_is_a_tcp_protocol_socket_so_answers_are_not_delayed_by_nagle(serve: Any) -> None:
    # asyncio sets TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP; without it every second answer
    # on a kept-alive connection waited ~40 ms for the client's delayed ACK (measured with bench/web.py).
    server = serve(all_ok)
    assert server._sock is not None and server._sock.proto == socket.IPPROTO_TCP
