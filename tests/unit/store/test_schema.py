"""One schema, migrated once when the store opens; read-only tools never change it."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from node.config import Paths
from node.ops.status import report
from node.store import schema
from node.store.store import Store
from toolkit.nodeproc import make_config


def _paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "in", tmp_path / "out", tmp_path / "var")


def test_an_index_from_the_first_release_is_migrated_at_open_and_keeps_its_rows(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths.var.mkdir(parents=True)
    old = sqlite3.connect(paths.database)
    old.executescript(
        "CREATE TABLE studies (study_uid TEXT PRIMARY KEY, patient_id TEXT, accession TEXT, study_date TEXT,"
        " first_received REAL NOT NULL, last_received REAL NOT NULL, n_instances INTEGER NOT NULL DEFAULT 0,"
        " state TEXT NOT NULL DEFAULT 'receiving', state_changed REAL NOT NULL, version INTEGER NOT NULL DEFAULT 0,"
        " reason TEXT);"
        "INSERT INTO studies(study_uid, first_received, last_received, state_changed) VALUES ('1.2.3', 1, 2, 3);"
    )
    old.commit()
    old.close()
    store = Store(paths)
    try:
        assert store.schema_version == schema.SCHEMA_VERSION
        columns = {row[1] for row in store.query("PRAGMA table_info(studies)")}
        assert {"attempts", "outbox_path", "store_purged", "snapshot_received", "cap_logged"} <= columns
        assert store.query("SELECT study_uid, attempts, outbox_path FROM studies") == [("1.2.3", 0, None)]
        tables = {row[0] for row in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"instances", "requests", "request_studies", "request_series", "pulls", "deliveries"} <= tables
    finally:
        store.close()


def test_a_current_database_is_not_touched_by_a_second_open(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    Store(paths).close()
    db = sqlite3.connect(paths.database)
    db.execute("CREATE TABLE marker (x)")  # a migration that re-ran the schema script would not remove it, but
    db.execute("PRAGMA user_version = 999")  # a version above ours proves migrate() returned without work
    db.commit()
    db.close()
    store = Store(paths)
    try:
        assert store.schema_version == 999
    finally:
        store.close()


def test_the_status_report_reads_without_creating_or_migrating_anything(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    out = io.StringIO()
    report(cfg, out.write, echo_peers=False)
    assert "none yet" in out.getvalue()
    assert not cfg.paths.var.exists()

    cfg.paths.var.mkdir(parents=True)
    old = sqlite3.connect(cfg.paths.database)
    old.execute("CREATE TABLE studies (study_uid TEXT)")
    old.commit()
    old.close()
    out = io.StringIO()
    report(cfg, out.write, echo_peers=False)
    assert "older version" in out.getvalue()
    check = sqlite3.connect(cfg.paths.database)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 0
    assert [r[1] for r in check.execute("PRAGMA table_info(studies)")] == ["study_uid"]
    check.close()
