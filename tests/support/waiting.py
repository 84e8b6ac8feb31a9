"""Polling with a deadline: how tests wait for the node (never a fixed sleep standing in for a condition)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float = 120.0, what: str = "condition", interval: float = 0.1) -> T:
    """Return the first truthy value of predicate(); fail the test when the deadline passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
