"""Study completion: when a study is complete (rules on the index), and the marker file in var/ready/ that
signals it to the processor. The state itself is written by node.store.state."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from node import failpoints
from node.store import state
from node.store.state import StudyState
from node.store.store import Store, fsync_dir

log = logging.getLogger(__name__)


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


def marker_for(store: Store, study_uid: str, version: int) -> bool:
    """Whether var/ready/ holds this study's marker for this version (or a later one)."""
    try:
        payload = json.loads((ready_dir(store) / f"{study_uid}.json").read_text(encoding="utf-8"))
        return int(payload["version"]) >= version
    except (OSError, ValueError, KeyError, TypeError):
        return False


def mark_complete(store: Store, study_uid: str, reason: str, may_be_incomplete: bool = False) -> int | None:
    """Move a study to `complete` (new version) and write its marker; None when it is not in a completable state."""
    version = state.mark_complete(store, study_uid, reason, may_be_incomplete)
    if version is None:
        return None
    failpoints.hit(failpoints.STUDY_COMPLETE_COMMITTED)
    write_marker(store, study_uid, version, may_be_incomplete, reason)
    log.info("Study %s complete (version %d): %s", study_uid, version, reason)
    return version


class CompletionMonitor:
    """Periodic decision-maker: reopens studies with late instances, completes idle ones, applies the hard cap."""

    def __init__(self, store: Store, config: CompletionConfig) -> None:
        self.store = store
        self.config = config

    def tick(self, now: float | None = None) -> list[str]:
        """One pass over the index; returns the study UIDs that became complete."""
        now = time.time() if now is None else now
        self.store.close_pending_deliveries()
        self._reopen_late()
        completed = []
        cfg = self.config
        for c in state.candidates(self.store):
            study_uid, idle = c.study_uid, now - c.last_received
            if c.pulls:
                # The request that pulls it decides (all expected instances present); its scheduler owns the
                # attempt budget, and a pull paused by a closed time window must not be cut short by the cap.
                continue
            if now - c.started >= cfg.max_wait_s:
                if self._apply_cap(study_uid, now - c.started, c.cap_logged):
                    completed.append(study_uid)
                continue
            if c.open_deliveries:
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
            state.set_state(self.store, study_uid, StudyState.DISCARDED, f"hard cap reached after {age:.0f}s: discarded")
            log.warning("Study %s discarded: still incomplete after %.0fs (completion.on_max_wait=discard)", study_uid, age)
            return False
        if not cap_logged:
            state.note_cap_logged(self.store, study_uid)
            log.warning("Study %s still incomplete after %.0fs; waiting (completion.on_max_wait=wait)", study_uid, age)
        return False

    def _reopen_late(self) -> None:
        """Instances that arrived after a study's snapshot reopen it, so its outputs get a new version."""
        reopened, kept = state.reopen_late(self.store)
        for study_uid in reopened:
            log.info("Study %s reopened: instances arrived after it was processed", study_uid)
        for study_uid in kept:
            log.warning("Study %s: late instance(s) after retention deleted its DICOM; its complete outputs are kept",
                        study_uid)
