"""Pruning: quarantine, conflicts, finished requests and forgotten study rows do not grow without bound."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from node.config import RetentionConfig
from node.store.pruning import Pruner
from node.store.store import Origin, Store, StoreError
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series
from toolkit.nodeproc import make_config

DAY = 86400.0
ORIGIN = Origin(calling_ae="UNITTEST", peer_ip="127.0.0.1", assoc_id="")
KEEP_ALL = RetentionConfig(quarantine_days=None, quarantine_max_mb=None, conflicts_days=None, requests_days=None,
                           studies_days=None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(make_config(tmp_path).paths)
    try:
        yield s
    finally:
        s.close()


def pruner(store: Store) -> Pruner:
    return Pruner(store, store.paths.var.parent / "outbox", store.paths.var.parent / "inbox")


def refuse(store: Store, n_slices: int = 1, rows: int = 64) -> None:
    """Send datasets with an invalid UID: each is quarantined."""
    for ds in make_series(StudySpec(), SeriesSpec(n_slices=n_slices, rows=rows, cols=rows)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.SeriesInstanceUID = "1.2.x"
            tmp = store.new_temp_path()
            ds.save_as(tmp, enforce_file_format=True)
        with pytest.raises(StoreError):
            store.ingest(tmp, ORIGIN)


def quarantine_files(store: Store) -> list[Path]:
    return sorted(store.paths.quarantine.glob("*.dcm"))


def test_quarantined_datasets_older_than_quarantine_days_are_deleted_with_their_rows(store: Store) -> None:
    refuse(store, 3)
    assert len(quarantine_files(store)) == 3
    cfg = replace(KEEP_ALL, quarantine_days=30)
    pruner(store).run(cfg, time.time() + 10 * DAY)
    assert len(quarantine_files(store)) == 3  # not old yet
    result = pruner(store).run(cfg, time.time() + 31 * DAY)
    assert result.quarantined == 3
    assert quarantine_files(store) == [] and list(store.paths.quarantine.glob("*.reason.txt")) == []
    assert store.query("SELECT COUNT(*) FROM quarantine") == [(0,)]


def test_past_the_quarantine_cap_a_refused_dataset_keeps_only_its_reason(store: Store) -> None:
    store.quarantine_max_bytes = 20_000  # one 64x64 16-bit dataset is about 9 KB
    refuse(store, 5)
    kept = quarantine_files(store)
    assert 1 <= len(kept) <= 2
    assert sum(p.stat().st_size for p in kept) <= 20_000
    reasons = [r for (r,) in store.query("SELECT reason FROM quarantine")]
    assert len(reasons) == 5
    assert sum("dataset not kept" in r for r in reasons) == 5 - len(kept)


def test_retention_trims_the_oldest_quarantined_datasets_to_the_cap(store: Store) -> None:
    refuse(store, 6)
    sizes = [p.stat().st_size for p in quarantine_files(store)]
    cap_mb = (sum(sizes) // 2) / (1 << 20)
    pruner(store).run(replace(KEEP_ALL, quarantine_max_mb=cap_mb), time.time())
    left = quarantine_files(store)
    assert sum(p.stat().st_size for p in left) <= cap_mb * (1 << 20)
    assert len(left) >= 2
    assert store.quarantine_bytes() == sum(p.stat().st_size for p in store.paths.quarantine.iterdir())


def test_conflict_copies_older_than_conflicts_days_are_deleted(store: Store) -> None:
    (ds,) = make_series(StudySpec(), SeriesSpec(n_slices=1))
    for description in ("first", "second"):
        ds.SeriesDescription = description
        tmp = store.new_temp_path()
        ds.save_as(tmp, enforce_file_format=True)
        store.ingest(tmp, ORIGIN)
    assert len(list(store.paths.conflicts.rglob("*.dcm"))) == 1
    result = pruner(store).run(replace(KEEP_ALL, conflicts_days=90), time.time() + 91 * DAY)
    assert result.conflicts == 1
    assert list(store.paths.conflicts.iterdir()) == []
    assert store.query("SELECT COUNT(*) FROM conflicts") == [(0,)]
    assert store.instance_count() == 1  # the stored copy is never touched


def add_request(store: Store, name: str, state: str, updated: float, inbox: Path, outbox: Path) -> int:
    with store.transaction() as db:
        cur = db.execute("INSERT INTO requests(name, file_name, file_location, sha256, peer, outputs, series_filter,"
                         " state, created, updated) VALUES (?, ?, ?, ?, 'pacs', '[]', '{}', ?, ?, ?)",
                         (name, f"{name}.yaml", "done" if state == "done" else "active", name, state, updated, updated))
        rid = int(cur.lastrowid or 0)
        db.execute("INSERT INTO request_queries(request_id, idx, query, state, next_attempt) VALUES (?, 0, '{}', 'found', 0)",
                   (rid,))
        db.execute("INSERT INTO request_studies(request_id, study_uid, state, next_attempt) VALUES (?, ?, 'complete', 0)",
                   (rid, f"1.2.{rid}"))
        db.execute("INSERT INTO request_series(request_id, study_uid, series_uid, expected, state)"
                   " VALUES (?, ?, ?, 1, 'complete')", (rid, f"1.2.{rid}", f"1.2.{rid}.1"))
    folder = inbox / ("done" if state == "done" else "active")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text("studies: []\n")
    (outbox / "requests").mkdir(parents=True, exist_ok=True)
    (outbox / "requests" / f"{name}.status.yaml").write_text("state: x\n")
    return rid


def test_finished_requests_are_forgotten_after_requests_days_with_their_files(store: Store, tmp_path: Path) -> None:
    inbox, outbox = store.paths.var.parent / "inbox", store.paths.var.parent / "outbox"
    now = time.time()
    old = add_request(store, "old", "done", now - 400 * DAY, inbox, outbox)
    add_request(store, "recent", "done", now - 10 * DAY, inbox, outbox)
    add_request(store, "running", "running", now - 400 * DAY, inbox, outbox)
    result = pruner(store).run(replace(KEEP_ALL, requests_days=365), now)
    assert result.requests == 1
    assert [n for (n,) in store.query("SELECT name FROM requests ORDER BY name")] == ["recent", "running"]
    for table in ("request_queries", "request_studies", "request_series"):
        assert store.query(f"SELECT COUNT(*) FROM {table} WHERE request_id=?", (old,)) == [(0,)]
    assert not (inbox / "done" / "old.yaml").exists() and (inbox / "done" / "recent.yaml").exists()
    assert not (outbox / "requests" / "old.status.yaml").exists()
    assert (outbox / "requests" / "running.status.yaml").exists()


def add_study(store: Store, uid: str, changed: float, outbox_path: str | None) -> None:
    with store.transaction() as db:
        db.execute("INSERT INTO studies(study_uid, first_received, last_received, n_instances, state, state_changed,"
                   " outbox_path, store_purged) VALUES (?, ?, ?, 0, 'done', ?, ?, ?)",
                   (uid, changed, changed, changed, outbox_path, changed))


def test_a_study_row_is_forgotten_only_when_nothing_of_the_study_is_left(store: Store) -> None:
    outbox = store.paths.var.parent / "outbox"
    now = time.time()
    add_study(store, "1.2.1", now - 400 * DAY, "GONE_FOLDER")
    add_study(store, "1.2.2", now - 400 * DAY, "KEPT_FOLDER")
    (outbox / "KEPT_FOLDER").mkdir(parents=True)
    add_study(store, "1.2.3", now - 10 * DAY, None)
    (store.paths.store / "1.2.1" / "1.2.1.1").mkdir(parents=True)  # empty folders retention left
    result = pruner(store).run(replace(KEEP_ALL, studies_days=365), now)
    assert result.studies == 1
    assert [u for (u,) in store.query("SELECT study_uid FROM studies ORDER BY study_uid")] == ["1.2.2", "1.2.3"]
    assert not (store.paths.store / "1.2.1").exists()


def test_the_shipped_defaults_keep_a_bounded_history() -> None:
    defaults = RetentionConfig()
    assert (defaults.quarantine_days, defaults.quarantine_max_mb, defaults.conflicts_days) == (30, 1024, 90)
    assert (defaults.requests_days, defaults.studies_days) == (365, 365)
