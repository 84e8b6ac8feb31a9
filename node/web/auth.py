"""Who may use the web interface: local users with argon2 hashes, API tokens, sessions, login rate limits."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 10
TOKEN_PREFIX = "dn_"  # noqa: S105 - a visible prefix, not a secret


class Role(StrEnum):
    VIEWER = "viewer"  # search, see, download
    OPERATOR = "operator"  # and request, cancel, retry, upload


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1}


def allows(role: Role, needed: Role) -> bool:
    return _RANK[role] >= _RANK[needed]


class UserError(ValueError):
    """A user name, role or password that cannot be accepted (the message says which and why)."""


@dataclass(frozen=True)
class Principal:
    """The person (or script) behind a request."""

    user: str
    role: Role
    via: str  # "session" or "token"


class Users:
    """The users file: {"users": {name: {"hash", "role"}}, "tokens": {sha256: {"user", "label", "created"}}}.

    Written whole (temp file, fsync, rename) with mode 0600; re-read when its modification time changes, so a
    `daemon.py user` run while the node is up takes effect at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hasher = PasswordHasher()
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {"users": {}, "tokens": {}}
        self._mtime: float | None = None
        # A constant-time answer for unknown names: verify against a real hash of a random password.
        self._decoy = self._hasher.hash(secrets.token_hex(16))

    def _load(self) -> dict[str, Any]:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                self._data, self._mtime = {"users": {}, "tokens": {}}, None
                return self._data
            if mtime != self._mtime:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
                    raise UserError(f"{self.path} is not a dicom-node users file")
                data.setdefault("tokens", {})
                self._data, self._mtime = data, mtime
            return self._data

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._mtime = None  # re-read at next use

    def names(self) -> dict[str, str]:
        return {name: str(u["role"]) for name, u in self._load()["users"].items()}

    def set_user(self, name: str, password: str, role: str) -> None:
        if not _NAME.match(name):
            raise UserError(f"user name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)")
        try:
            Role(role)
        except ValueError:
            raise UserError(f"role {role!r}: one of {', '.join(r.value for r in Role)}") from None
        if len(password) < MIN_PASSWORD:
            raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
        data = copy.deepcopy(self._load())  # edited apart from the loaded copy, saved whole
        data["users"][name] = {"hash": self._hasher.hash(password), "role": role}
        self._save(data)

    def remove_user(self, name: str) -> bool:
        data = copy.deepcopy(self._load())  # edited apart from the loaded copy, saved whole
        if data["users"].pop(name, None) is None:
            return False
        data["tokens"] = {k: v for k, v in data["tokens"].items() if v.get("user") != name}
        self._save(data)
        return True

    def verify(self, name: str, password: str) -> Principal | None:
        user = self._load()["users"].get(name)
        try:
            if user is None:
                self._hasher.verify(self._decoy, password)  # same cost as a real check: names are not probed
                return None
            self._hasher.verify(str(user["hash"]), password)
        except (VerificationError, InvalidHashError):
            return None
        return Principal(name, Role(user["role"]), "session")

    def new_token(self, name: str, label: str) -> str:
        """A new API token for an existing user; only its hash is kept, the token is shown once."""
        data = copy.deepcopy(self._load())  # edited apart from the loaded copy, saved whole
        if name not in data["users"]:
            raise UserError(f"no user {name!r}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        data["tokens"][_digest(token)] = {"user": name, "label": label[:100], "created": time.time()}
        self._save(data)
        return token

    def token_principal(self, token: str) -> Principal | None:
        data = self._load()
        entry = data["tokens"].get(_digest(token))
        if entry is None:
            return None
        user = data["users"].get(entry.get("user"))
        if user is None:
            return None
        return Principal(str(entry["user"]), Role(user["role"]), "token")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class Session:
    user: str
    role: Role
    csrf: str
    expires: float


class Sessions:
    """Server-side sessions (the cookie holds only a random id): a restart logs everyone out, a logout is final."""

    def __init__(self, lifetime_s: float, max_sessions: int = 10_000) -> None:
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def create(self, principal: Principal) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(principal.user, principal.role, secrets.token_urlsafe(32), time.time() + self.lifetime_s)
        with self._lock:
            self._expire()
            if len(self._by_id) >= self.max_sessions:  # the oldest goes: memory stays bounded
                oldest = min(self._by_id, key=lambda k: self._by_id[k].expires)
                del self._by_id[oldest]
            self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._by_id.get(sid)
            if session is None or session.expires < time.time():
                self._by_id.pop(sid, None)
                return None
            return session

    def drop(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._by_id.pop(sid, None)

    def drop_user(self, user: str) -> None:
        with self._lock:
            for sid in [k for k, s in self._by_id.items() if s.user == user]:
                del self._by_id[sid]

    def _expire(self) -> None:
        now = time.time()
        for sid in [k for k, s in self._by_id.items() if s.expires < now]:
            del self._by_id[sid]


class LoginLimiter:
    """Failed logins allowed in `window_s` seconds: `attempts` per user name, `per_address` times that per client
    address (behind a reverse proxy every user shares one address: a handful of typos must not lock out all)."""

    def __init__(self, attempts: int, window_s: float, per_address: int = 10) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.per_address = per_address
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _limit(self, key: str) -> int:
        return self.attempts * (self.per_address if key.startswith("ip:") else 1)

    def retry_after(self, *keys: str) -> float:
        """Seconds until a login may be tried again for these keys (0: now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in keys:
                q = self._failures.get(key)
                if not q:
                    continue
                while q and q[0] < now - self.window_s:
                    q.popleft()
                if len(q) >= self._limit(key):
                    wait = max(wait, q[0] + self.window_s - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 100_000:
                self._failures.clear()  # bounded memory under a spray of names; the limit restarts
            for key in keys:
                self._failures.setdefault(key, deque(maxlen=self._limit(key) + 1)).append(now)

    def succeeded(self, *keys: str) -> None:
        """A good password clears the user's count (not the address's: a sprayer with one account stays slowed)."""
        with self._lock:
            for key in keys:
                if not key.startswith("ip:"):
                    self._failures.pop(key, None)
