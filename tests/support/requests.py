"""Helpers for request tests: drop a request file like a user, read its status file, wait for a state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from node.app import Node
from tests.support.waiting import wait_for
from toolkit.dicomgen import StudySpec

FAST = {"settle_s": 0.2, "rescan_interval_s": 1, "backoff_base_s": 0.3, "backoff_max_s": 1.5, "max_attempts": 30}


def drop(node: Node, name: str, text: str) -> Path:
    """Write a request file the way a careful user does: a temp name, then a rename into the inbox."""
    inbox = node.config.paths.inbox
    tmp = inbox / f".{name}.part"
    tmp.write_text(text, encoding="utf-8")
    tmp.rename(inbox / name)
    return inbox / name


def status(node: Node, name: str) -> dict[str, Any]:
    path = node.config.paths.outbox / "requests" / f"{name}.status.yaml"
    if not path.exists():
        return {}
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def wait_state(node: Node, name: str, states: tuple[str, ...] = ("done",), timeout: float = 120.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        doc = status(node, name)
        return doc if doc.get("state") in states else None

    try:
        return dict(wait_for(check, timeout, f"request {name} in {states}"))
    except AssertionError:
        raise AssertionError(f"request {name} not in {states}: {status(node, name)}") from None


def series_counts(node: Node, study_uid: str) -> dict[str, int]:
    rows = node.store.query("SELECT series_uid, COUNT(*) FROM instances WHERE study_uid=? GROUP BY series_uid", (study_uid,))
    return {str(uid): int(n) for uid, n in rows}


def expected_counts(spec: StudySpec) -> dict[str, int]:
    return {s.series_uid: s.n_slices for s in spec.series}
