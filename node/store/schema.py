"""The database schema: every table in one place, and the one migration that brings any older index to it.

Run once when the node opens its store (Store.__init__); read-only tools check the version instead.
"""

from __future__ import annotations

from typing import Any

# Bumped whenever a table or column is added; a database with a lower user_version is migrated at open.
SCHEMA_VERSION = 3

_TABLES = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    series_number INTEGER,
    instance_number INTEGER,
    modality TEXT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    calling_ae TEXT,
    peer_ip TEXT,
    assoc_id TEXT,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid, series_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT,
    accession TEXT,
    study_date TEXT,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'receiving',
    state_changed REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    snapshot_received REAL,
    may_be_incomplete INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    outbox_path TEXT,
    cap_logged INTEGER NOT NULL DEFAULT 0,
    store_purged REAL,
    snapshot_instances INTEGER
);
CREATE TABLE IF NOT EXISTS deliveries (
    study_uid TEXT NOT NULL,
    assoc_id TEXT NOT NULL,
    PRIMARY KEY (study_uid, assoc_id)
);
CREATE TABLE IF NOT EXISTS conflicts (
    sop_uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT,
    received_at TEXT NOT NULL,
    PRIMARY KEY (sop_uid, sha256)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    calling_ae TEXT,
    peer_ip TEXT,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    file_name TEXT NOT NULL,
    file_location TEXT NOT NULL DEFAULT 'inbox',
    sha256 TEXT NOT NULL,
    peer TEXT NOT NULL,
    outputs TEXT NOT NULL,
    series_filter TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    not_before REAL,
    state TEXT NOT NULL DEFAULT 'queued',
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_sha ON requests(sha256);
CREATE TABLE IF NOT EXISTS request_queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id INTEGER NOT NULL REFERENCES requests(id),
    idx INTEGER NOT NULL,
    query TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    reason TEXT,
    found INTEGER,
    UNIQUE (request_id, idx)
);
CREATE TABLE IF NOT EXISTS request_studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id INTEGER NOT NULL REFERENCES requests(id),
    query_id INTEGER,
    study_uid TEXT NOT NULL,
    patient_id TEXT,
    accession TEXT,
    study_date TEXT,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    reason TEXT,
    expected INTEGER,
    received INTEGER,
    updated REAL,
    UNIQUE (request_id, study_uid)
);
CREATE INDEX IF NOT EXISTS request_studies_uid ON request_studies(study_uid);
CREATE TABLE IF NOT EXISTS request_series (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    number INTEGER,
    modality TEXT,
    description TEXT,
    expected INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    moves INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, series_uid)
);
CREATE TABLE IF NOT EXISTS pulls (
    study_uid TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (study_uid, owner)
);
"""

# Columns added to tables after their first release: an index created by an older version gains them here.
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("studies", "snapshot_received", "REAL"),
    ("studies", "may_be_incomplete", "INTEGER NOT NULL DEFAULT 0"),
    ("studies", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("studies", "outbox_path", "TEXT"),
    ("studies", "cap_logged", "INTEGER NOT NULL DEFAULT 0"),
    ("studies", "store_purged", "REAL"),
    ("studies", "snapshot_instances", "INTEGER"),
)


_PG_META = "CREATE TABLE IF NOT EXISTS schema_meta (version BIGINT NOT NULL)"


def version(db: Any, dialect: str = "sqlite") -> int:
    if dialect == "postgresql":
        db.execute(_PG_META)
        row = db.execute("SELECT version FROM schema_meta").fetchone()
        return int(row[0]) if row else 0
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: Any, dialect: str = "sqlite") -> None:
    """Create missing tables and columns in one transaction; idempotent, a no-op on a current database.
    The same DDL serves PostgreSQL, translated (node/store/postgres.py), with its version in schema_meta."""
    if version(db, dialect) >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        pg = dialect == "postgresql"
        if pg:
            from node.store.postgres import translate_ddl
        for statement in _TABLES.split(";"):
            if statement.strip():
                db.execute(translate_ddl(statement) if pg else statement)
        for table, column, declaration in _ADDED_COLUMNS:
            # table/column/declaration are the constants above, never input.
            if pg:
                db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {translate_ddl(declaration)}")
                continue
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        if pg:
            db.execute("DELETE FROM schema_meta")
            db.execute("INSERT INTO schema_meta(version) VALUES (?)", (SCHEMA_VERSION,))
        else:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
