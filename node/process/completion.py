"""Study completion: the state machine receiving -> complete -> processing -> done|failed (and reopened),
decided from the index and signalled to the processor by a marker file in var/ready/."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from node.store.store import Store, fsync_dir

log = logging.getLogger(__name__)

_MIGRATIONS = [
    "ALTER TABLE studies ADD COLUMN snapshot_received REAL",
    "ALTER TABLE studies ADD COLUMN may_be_incomplete INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE studies ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE studies ADD COLUMN outbox_path TEXT",
    "ALTER TABLE studies ADD COLUMN cap_logged INTEGER NOT NULL DEFAULT 0",
]
_PULLS = """
CREATE TABLE IF NOT EXISTS pulls (
    study_uid TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (study_uid, owner)
);
"""


class StudyState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    REOPENED = "reopened"
    DISCARDED = "discarded"


class CapAction(StrEnum):
    PROCESS = "process"
    WAIT = "wait"
    DISCARD = "discard"


@dataclass(frozen=True)
class CompletionConfig:
    stable_age_s: float = 60.0
    max_wait_s: float = 3600.0
    on_max_wait: CapAction = CapAction.PROCESS
    check_interval_s: float = 1.0


def migrate(store: Store) -> None:
    """Add the completion columns and tables to an index created by the store (idempotent)."""
    with store.transaction() as db:
        for statement in _MIGRATIONS:
            try:
                db.execute(statement)
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
        db.execute(_PULLS.strip())


def ready_dir(store: Store) -> Path:
    return store.paths.var / "ready"


def write_marker(store: Store, study_uid: str, version: int, may_be_incomplete: bool, reason: str) -> Path:
    """Signal a complete study to the processor: a JSON marker written whole, then renamed in."""
    folder = ready_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{study_uid}.json"
    tmp = folder / f".{study_uid}.json.tmp"
    payload = {"study_uid": study_uid, "version": version, "may_be_incomplete": may_be_incomplete, "reason": reason}
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(folder)
    return final


def claim_pull(store: Store, study_uid: str, owner: str) -> None:
    """A request is pulling this study: the idle timer must not complete it; the puller will."""
    with store.transaction() as db:
        db.execute("INSERT OR IGNORE INTO pulls(study_uid, owner) VALUES (?,?)", (study_uid, owner))


def release_pull(store: Store, study_uid: str, owner: str) -> None:
    with store.transaction() as db:
        db.execute("DELETE FROM pulls WHERE study_uid=? AND owner=?", (study_uid, owner))


def mark_complete(store: Store, study_uid: str, reason: str, may_be_incomplete: bool = False) -> int | None:
    """Move a study to `complete` (new version) and write its marker; None when it is not in a completable state."""
    now = time.time()
    with store.transaction() as db:
        row = db.execute("SELECT state, version, last_received FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        if row is None or row[0] not in (StudyState.RECEIVING, StudyState.REOPENED):
            return None
        version = int(row[1]) + 1
        db.execute(
            "UPDATE studies SET state=?, version=?, state_changed=?, snapshot_received=?, may_be_incomplete=?,"
            " reason=?, cap_logged=0 WHERE study_uid=?",
            (StudyState.COMPLETE, version, now, row[2], int(may_be_incomplete), reason, study_uid),
        )
    write_marker(store, study_uid, version, may_be_incomplete, reason)
    log.info("Study %s complete (version %d): %s", study_uid, version, reason)
    return version


_SETTABLE = frozenset({"outbox_path", "attempts", "snapshot_received"})


def set_state(store: Store, study_uid: str, state: StudyState, reason: str | None = None, **extra: Any) -> None:
    unknown = set(extra) - _SETTABLE
    if unknown:
        raise ValueError(f"not settable: {sorted(unknown)}")
    columns = "".join(f", {k}=?" for k in extra)
    sql = f"UPDATE studies SET state=?, state_changed=?, reason=?{columns} WHERE study_uid=?"  # noqa: S608 - fixed column names
    with store.transaction() as db:
        db.execute(sql, (state, time.time(), reason, *extra.values(), study_uid))


class CompletionMonitor:
    """Periodic decision-maker: reopens studies with late instances, completes idle ones, applies the hard cap."""

    def __init__(self, store: Store, config: CompletionConfig) -> None:
        self.store = store
        self.config = config
        migrate(store)

    def tick(self, now: float | None = None) -> list[str]:
        """One pass over the index; returns the study UIDs that became complete."""
        now = time.time() if now is None else now
        self._reopen_late()
        completed = []
        rows = self.store.query(
            "SELECT s.study_uid, CASE WHEN s.state=? THEN s.state_changed ELSE s.first_received END,"
            " s.last_received, s.cap_logged,"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.study_uid=s.study_uid),"
            " (SELECT COUNT(*) FROM pulls p WHERE p.study_uid=s.study_uid)"
            " FROM studies s WHERE s.state IN (?, ?)",
            (StudyState.REOPENED, StudyState.RECEIVING, StudyState.REOPENED),
        )
        cfg = self.config
        for study_uid, first, last, cap_logged, open_deliveries, pulls in rows:
            idle = now - last
            if pulls:
                # The request that pulls it decides (all expected instances present); its scheduler owns the
                # attempt budget, and a pull paused by a closed time window must not be cut short by the cap.
                continue
            if now - first >= cfg.max_wait_s:
                if self._apply_cap(study_uid, now - first, bool(cap_logged)):
                    completed.append(study_uid)
                continue
            if open_deliveries:
                continue  # an association is still delivering into it
            if idle >= cfg.stable_age_s and mark_complete(
                self.store, study_uid, f"pushed: no new instance for {idle:.0f}s and no open association"
            ):
                completed.append(study_uid)
        return completed

    def _apply_cap(self, study_uid: str, age: float, cap_logged: bool) -> bool:
        action = self.config.on_max_wait
        if action == CapAction.PROCESS:
            return (
                mark_complete(
                    self.store,
                    study_uid,
                    f"hard cap: still receiving after {age:.0f}s (completion.max_wait_s); processed as it is",
                    may_be_incomplete=True,
                )
                is not None
            )
        if action == CapAction.DISCARD:
            set_state(self.store, study_uid, StudyState.DISCARDED, f"hard cap reached after {age:.0f}s: discarded")
            log.warning("Study %s discarded: still incomplete after %.0fs (completion.on_max_wait=discard)", study_uid, age)
            return False
        if not cap_logged:
            with self.store.transaction() as db:
                db.execute("UPDATE studies SET cap_logged=1 WHERE study_uid=?", (study_uid,))
            log.warning("Study %s still incomplete after %.0fs; waiting (completion.on_max_wait=wait)", study_uid, age)
        return False

    def _reopen_late(self) -> None:
        """Instances that arrived after a study's snapshot reopen it, so its outputs get a new version."""
        rows = self.store.query(
            "SELECT study_uid FROM studies WHERE state IN (?, ?, ?) AND last_received > COALESCE(snapshot_received, 0)",
            (StudyState.DONE, StudyState.FAILED, StudyState.DISCARDED),
        )
        for (study_uid,) in rows:
            set_state(self.store, study_uid, StudyState.REOPENED, "late instances arrived")
            log.info("Study %s reopened: instances arrived after it was processed", study_uid)
