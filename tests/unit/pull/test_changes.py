"""Request status at scale: one render costs a fixed number of queries, and changes are coalesced, not replayed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.pull.changes import RequestChanges
from node.pull.inbox import status_document
from node.store.store import Store
from tests.support.waiting import wait_for
from toolkit.nodeproc import make_config


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_config(tmp_path).paths)
    try:
        yield s
    finally:
        s.close()


def add_request(store: Store, name: str, n_studies: int, series_per_study: int = 3) -> int:
    now = time.time()
    with store.transaction() as db:
        cur = db.execute("INSERT INTO requests(name, file_name, sha256, peer, outputs, series_filter, state, created,"
                         " updated) VALUES (?, ?, ?, 'pacs', '[]', '{}', 'running', ?, ?)",
                         (name, f"{name}.yaml", name, now, now))
        rid = int(cur.lastrowid or 0)
        db.execute("INSERT INTO request_queries(request_id, idx, query, state, next_attempt, found)"
                   " VALUES (?, 0, '{}', 'found', 0, ?)", (rid, n_studies))
        for i in range(n_studies):
            uid = f"1.2.{rid}.{i}"
            db.execute("INSERT INTO request_studies(request_id, query_id, study_uid, state, next_attempt, expected,"
                       " received) VALUES (?, 1, ?, 'complete', 0, 10, 10)", (rid, uid))
            db.execute("INSERT INTO studies(study_uid, first_received, last_received, state, state_changed)"
                       " VALUES (?, ?, ?, 'processing', ?)", (uid, now, now, now))
            for k in range(series_per_study):
                db.execute("INSERT INTO request_series(request_id, study_uid, series_uid, expected, state)"
                           " VALUES (?, ?, ?, 5, 'complete')", (rid, uid, f"{uid}.{k}"))
    return rid


def statements_to_render(store: Store, rid: int) -> int:
    seen: list[str] = []
    store.db.set_trace_callback(seen.append)
    try:
        doc = status_document(store, rid)
    finally:
        store.db.set_trace_callback(None)
    assert doc is not None
    return len(seen)


def test_rendering_a_request_status_takes_as_many_queries_for_500_studies_as_for_5(store: Store) -> None:
    small, large = add_request(store, "small", 5), add_request(store, "large", 500)
    assert statements_to_render(store, large) == statements_to_render(store, small)
    doc = status_document(store, large)
    assert doc is not None and len(doc["studies"]) == 500
    assert all(s["series"] == {"complete": 3} for s in doc["studies"])


def test_a_burst_of_changes_to_one_request_is_reported_once_more_not_once_per_change(store: Store) -> None:
    rid = add_request(store, "r", 1)
    handled: list[int] = []
    entered, release = threading.Event(), threading.Event()

    def handle(r: int) -> None:
        handled.append(r)
        if len(handled) == 1:
            entered.set()
            release.wait(10)

    changes = RequestChanges(store, handle, ("queued", "running", "pulled"))
    changes.watch_processing()  # what is open now is known: the start-up look marks nothing new later
    changes.start()
    try:
        changes.mark(rid)
        assert entered.wait(10)  # the first report is under way (slow, as for a large request)
        for _ in range(1000):
            changes.mark(rid)
        release.set()
        wait_for(lambda: len(handled) >= 2, 10, "the coalesced second report")
        time.sleep(0.5)  # room for any report that should not come
    finally:
        changes.stop()
    assert handled == [rid, rid]


def test_the_processing_watch_marks_only_requests_whose_studies_changed_state(store: Store) -> None:
    first, second = add_request(store, "first", 3), add_request(store, "second", 3)
    handled: list[int] = []
    changes = RequestChanges(store, handled.append, ("queued", "running", "pulled"))
    changes.watch_processing()
    changes.flush()
    assert sorted(handled) == [first, second]  # the first look reports every open request once
    handled.clear()
    changes.watch_processing()
    changes.flush()
    assert handled == []
    with store.transaction() as db:
        db.execute("UPDATE studies SET state='done', state_changed=? WHERE study_uid=?", (time.time(), f"1.2.{second}.1"))
    changes.watch_processing()
    changes.flush()
    assert handled == [second]


def test_a_request_that_is_over_is_no_longer_watched(store: Store) -> None:
    rid = add_request(store, "r", 2)
    with store.transaction() as db:
        db.execute("UPDATE requests SET state='done' WHERE id=?", (rid,))
    handled: list[int] = []
    changes = RequestChanges(store, handled.append, ("queued", "running", "pulled"))
    changes.watch_processing()
    changes.flush()
    assert handled == []
