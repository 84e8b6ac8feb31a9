"""A web server context for tests: real auth objects and audit file, the node's parts given or left out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from node.config import Config
from node.ops.metrics import Metrics
from node.web.auth import LoginLimiter, Sessions, Users
from node.web.context import Audit, WebContext
from node.web.service import Actions


def web_context(
    root: Path,
    checks: Callable[[], Mapping[str, tuple[bool, str]]],
    metrics: Metrics,
    config: Config | None = None,
    actions: Actions | None = None,
) -> WebContext:
    return WebContext(
        config=lambda: cast(Any, config),
        actions=actions if actions is not None else cast(Any, None),
        metrics=metrics,
        checks=checks,
        users=Users(root / "users.json"),
        sessions=Sessions(3600),
        limiter=LoginLimiter(5, 300),
        audit=Audit(root / "audit.log"),
        disk_ok=lambda: True,
    )
