"""What every web route needs: the node's parts, who is asking (session or token), CSRF checks, the audit trail."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request

from node.config import Config
from node.ops.metrics import Metrics
from node.web.auth import LoginLimiter, Principal, Role, Sessions, Users, allows
from node.web.service import Actions, ServiceError, progress_snapshot

log = logging.getLogger(__name__)

SESSION_COOKIE = "dn_session"
LOGIN_COOKIE = "dn_login"  # double-submit token of the login form (no session exists yet)
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Audit:
    """One JSON line per action that matters (who, what, when, from where; never a patient name), fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, principal: Principal | None, action: str, target: str, client: str, **extra: Any) -> None:
        entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"),
                 "user": principal.user if principal else None, "via": principal.via if principal else None,
                 "action": action, "target": target, "client": client, **extra}
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
        log.info("audit: %s %s %s by %s from %s", action, target, extra or "", entry["user"], client)


@dataclass
class WebContext:
    config: Callable[[], Config]
    actions: Actions
    metrics: Metrics
    checks: Callable[[], Mapping[str, tuple[bool, str]]]
    users: Users
    sessions: Sessions
    limiter: LoginLimiter
    audit: Audit
    disk_ok: Callable[[], bool]
    stopping: threading.Event = field(default_factory=threading.Event)
    _snapshot: tuple[float, str] = (0.0, "")
    _snapshot_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def store(self) -> Any:
        return self.actions.store

    def progress(self) -> str:
        """The request list's progress as JSON, recomputed at most once a second for all listeners together."""
        with self._snapshot_lock:
            at, text = self._snapshot
            if time.monotonic() - at >= 1.0:
                text = progress_snapshot(self.store)
                self._snapshot = (time.monotonic(), text)
            return text


def client_of(request: Request) -> str:
    return request.client.host if request.client else "?"


def principal_of(ctx: WebContext, request: Request) -> Principal | None:
    """The session's user, or the API token's; None when neither is valid."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return ctx.users.token_principal(auth[7:].strip())
    session = ctx.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    return Principal(session.user, session.role, "session")


def csrf_of(ctx: WebContext, request: Request) -> str:
    session = ctx.sessions.get(request.cookies.get(SESSION_COOKIE))
    return session.csrf if session else ""


def require(ctx: WebContext, request: Request, role: Role, form_token: str | None = None) -> Principal:
    """The caller, checked: logged in (401), allowed (403), and for a state change with a session cookie, the
    CSRF token from the header or the form (403). Token callers need no CSRF token: browsers never send one."""
    principal = principal_of(ctx, request)
    if principal is None:
        raise ServiceError(401, "Log in first (or send an API token: Authorization: Bearer ...).")
    if not allows(principal.role, role):
        raise ServiceError(403, f"Your role ({principal.role}) does not allow this; it needs {role}.")
    if request.method not in SAFE_METHODS and principal.via == "session":
        sent = request.headers.get(CSRF_HEADER) or form_token or ""
        if not secrets.compare_digest(sent, csrf_of(ctx, request)):
            raise ServiceError(403, "The form is out of date or was not sent by this site (CSRF token missing or "
                                    "wrong). Reload the page and try again.")
    return principal
