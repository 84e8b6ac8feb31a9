"""The node's one HTTP server: FastAPI on uvicorn in a thread of its own, started and stopped with the node.

FastAPI because it serves the OpenAPI description of the API from the routes themselves and runs plain
(blocking) route functions on a worker thread pool, so a slow C-FIND never holds the event loop; uvicorn
because it is the established ASGI server for it and runs embedded (no signal handlers off the main thread).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.ops.health import health_report
from node.web import api, pages
from node.web.context import WebContext
from node.web.service import ServiceError

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(title="dicom-node", version="1", docs_url=None, redoc_url=None,
                  description="Search the PACS, ask for studies, follow them, take the results. Authenticate with "
                              "a session (the pages) or `Authorization: Bearer <token>` (`daemon.py user token`).")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if request.url.path.startswith(("/api", "/login", "/requests", "/studies", "/search", "/status", "/upload")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        if request.url.path.startswith("/api"):
            body: dict[str, Any] = {"error": exc.message}
            if exc.problems:
                body["problems"] = exc.problems
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse(body, status_code=exc.status, headers=headers)
        return pages.error_page(ctx, request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()][:20]
        return JSONResponse({"error": "The request is not valid: " + "; ".join(problems), "problems": problems},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Never echo the path or the method back (nothing the client sent is reflected).
        words = {404: "not found", 405: "method not allowed"}.get(exc.status_code, "error")
        return JSONResponse({"error": words}, status_code=exc.status_code, headers=exc.headers)

    @app.api_route("/healthz", methods=["GET", "HEAD"], include_in_schema=False)
    def healthz() -> Response:
        healthy, doc = health_report(ctx.checks)
        return JSONResponse(doc, status_code=200 if healthy else 503, headers={"Cache-Control": "no-store"})

    @app.api_route("/metrics", methods=["GET", "HEAD"], include_in_schema=False)
    def metrics() -> Response:
        return PlainTextResponse(ctx.metrics.render(), media_type=PROMETHEUS_TEXT)

    app.include_router(api.router(ctx))
    app.include_router(pages.router(ctx))
    return app


class WebServer:
    """uvicorn serving build_app(ctx) from a daemon thread; start() returns once the socket listens."""

    def __init__(self, ctx: WebContext, bind: str, port: int, allow_remote: bool = False) -> None:
        if not allow_remote and not _is_loopback(bind):
            raise ValueError(f"web.bind {bind!r} is not a loopback address: put a TLS reverse proxy in front "
                             "(docs/web.md) or set web.allow_remote: true")
        if not 0 <= port <= 65535:
            raise ValueError(f"web.port {port} is not in 0..65535")
        self.ctx = ctx
        self.bind = bind
        self._requested_port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._sock is None:
            return self._requested_port
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
        # it every second response on a kept-alive connection waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.bind, self._requested_port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.set_inheritable(False)
        self._sock = sock
        config = uvicorn.Config(build_app(self.ctx), log_config=None, access_log=False, lifespan="off",
                                timeout_keep_alive=5, timeout_graceful_shutdown=3, limit_concurrency=200,
                                server_header=False, proxy_headers=False, h11_max_incomplete_event_size=64 * 1024)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="web", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"the web server did not start on {self.bind}:{self.port}")
            self._thread.join(0.02)
        log.info("Web interface and API on http://%s:%d/ (health /healthz, metrics /metrics)", self.bind, self.port)

    def alive(self) -> tuple[bool, str]:
        ok = self._thread is not None and self._thread.is_alive()
        return ok, f"serving on {self.bind}:{self.port}" if ok else "web server thread is not running"

    def stop(self) -> None:
        self.ctx.stopping.set()  # server-push streams end at their next tick
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> WebServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
