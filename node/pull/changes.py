"""Request changes, coalesced: work threads mark a request changed; one thread re-derives and reports it.

Re-deriving a request's state and rewriting its status file cost time linear in its studies. Done on every
event (each series moved, each progress tick, each processor state change seen by a 2 s poll), a request of
10,000 studies cost quadratic time and held the status lock the work threads needed. Here a change only marks
the request; the `request-status` thread handles each marked request once per pass, no more often than a few
times its own last cost, and a request whose studies' processing states did not change is not looked at.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from node.background import Loop
from node.store.store import Store

log = logging.getLogger(__name__)

# The processor's progress on a request's studies is looked at this often (one query for all open requests).
WATCH_INTERVAL_S = 2.0
# A request is handled again no sooner than this many times its last handling took (and at least MIN_GAP_S).
COST_FACTOR = 4.0
MIN_GAP_S = 0.2


class RequestChanges:
    """Coalesces request changes; `handle(rid)` runs on the one status thread (or inline when not started)."""

    def __init__(self, store: Store, handle: Callable[[int], None], open_states: tuple[str, ...]) -> None:
        self.store = store
        self._handle = handle
        self._open_states = open_states
        self._lock = threading.Lock()
        self._dirty: set[int] = set()
        self._not_before: dict[int, float] = {}
        self._seen: dict[int, tuple[object, ...]] = {}
        self._next_watch = 0.0
        self._loop: Loop | None = None

    def start(self) -> None:
        self._loop = Loop("request-status", self._pass, lambda: WATCH_INTERVAL_S, log)
        self._loop.start()

    def stop(self) -> None:
        """Stop the thread, then handle what is still marked, so the last state is reported."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop()
        self.flush()

    def health(self, stall_after_s: float) -> tuple[bool, str]:
        if self._loop is None:
            return False, "request-status not running"
        return self._loop.health(stall_after_s)

    def mark(self, rid: int) -> None:
        """A request changed: handled at once when no thread runs (tests, tools), else on the next pass."""
        if self._loop is None:
            self._run(rid)
            return
        with self._lock:
            self._dirty.add(rid)
        self._loop.wake()

    def flush(self) -> None:
        with self._lock:
            rids, self._dirty = sorted(self._dirty), set()
        for rid in rids:
            self._run(rid)

    def _run(self, rid: int) -> float:
        started = time.monotonic()
        try:
            self._handle(rid)
        except Exception:
            log.exception("Status update for request %d failed", rid)
        spent = time.monotonic() - started
        with self._lock:
            self._not_before[rid] = time.monotonic() + max(MIN_GAP_S, COST_FACTOR * spent)
        return spent

    def _pass(self) -> float:
        now = time.monotonic()
        if now >= self._next_watch:
            self.watch_processing()
            self._next_watch = now + WATCH_INTERVAL_S
        with self._lock:
            due = sorted(r for r in self._dirty if self._not_before.get(r, 0.0) <= now)
            self._dirty.difference_update(due)
        for rid in due:
            self._run(rid)
        with self._lock:
            waits = [self._not_before.get(r, 0.0) - time.monotonic() for r in self._dirty]
        return min([self._next_watch - time.monotonic(), *waits])

    def watch_processing(self) -> None:
        """Mark the open requests whose studies' processing states changed since the last look (one query)."""
        rows = self.store.query(
            "SELECT rs.request_id, st.state, COUNT(*), MAX(st.state_changed), MAX(r.updated) FROM request_studies rs"
            " JOIN requests r ON r.id=rs.request_id LEFT JOIN studies st ON st.study_uid=rs.study_uid"
            " WHERE r.state IN (SELECT value FROM json_each(?)) GROUP BY rs.request_id, st.state"
            " UNION ALL SELECT id, NULL, 0, NULL, updated FROM requests WHERE state IN (SELECT value FROM json_each(?))"
            " ORDER BY 1, 2, 3",
            (json.dumps(self._open_states), json.dumps(self._open_states)))
        seen: dict[int, list[object]] = {}
        # A request's own row counts too: `daemon.py cancel` writes it from another process.
        for rid, state, n, changed, updated in rows:
            seen.setdefault(int(rid), []).extend((state, n, changed, updated))
        current = {rid: tuple(v) for rid, v in seen.items()}
        changed_rids = [rid for rid, v in current.items() if self._seen.get(rid) != v]
        self._seen = current
        if changed_rids:
            with self._lock:
                self._dirty.update(changed_rids)
