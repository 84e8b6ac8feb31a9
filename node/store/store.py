"""The on-disk store: UID-named layout, durable atomic writes, quarantine, conflicts and the SQLite index.

Slightly over our ~450-line norm: the durable write path (temp, fsync, rename, index) is kept in one
readable sequence on purpose.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.config import Paths
from node.dicom import reader
from node.dicom.validators import uid_problem
from node.store import schema
from node.store.durable import DirSync, GroupCommit, fsync_dir

log = logging.getLogger(__name__)

# Storage status codes (PS3.4 Annex B.2.3).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210  # dataset could not be parsed
STATUS_INVALID_UIDS = 0xC220  # a key UID is missing or malformed
STATUS_UID_MISMATCH = 0xC221  # dataset SOP UIDs differ from the C-STORE command
STATUS_STORE_FAILED = 0xA701  # I/O failure while writing (out of resources: unable to store)

# The index columns of an instance, read by the one walk that also proves the dataset well formed.
_HEADER_TAGS: dict[int, str] = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00100020: "PatientID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
}




class StoreError(Exception):
    """A dataset could not be stored; `status` is the DICOM status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Origin:
    """Who delivered an instance: the association it came on (or an import source)."""

    calling_ae: str = ""
    peer_ip: str = ""
    assoc_id: str = ""


KEEP_FIRST, NEWEST_WINS = "keep_first", "newest_wins"


def _db_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


DB_ERRORS = _db_errors()  # what a failed index write raises, on either backend


@dataclass(frozen=True)
class StoreResult:
    sop_uid: str
    study_uid: str
    series_uid: str
    path: Path
    duplicate: bool = False
    conflict: bool = False


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dataset_offset(path: Path) -> int:
    """Byte offset where the dataset starts after the Part 10 preamble and file meta (0 when none)."""
    return reader.file_dataset_offset(path)


def dataset_sha256(path: Path) -> str:
    """SHA-256 of the dataset bytes as received (the file meta we write ourselves is excluded)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        fh.seek(dataset_offset(path))
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """UID-named file store with a SQLite (WAL) index; every accepted instance is durable before it is indexed."""

    def __init__(self, paths: Paths, read_only: bool = False) -> None:
        """Open the store; the database is migrated to the current schema here, once (not when read_only)."""
        self.paths = paths
        self._write_lock: int | None = None
        self._db_lock = threading.Lock()
        self._group = GroupCommit(self.transaction)  # index rows of concurrent C-STOREs: one commit
        self._dir_sync = DirSync(lambda path: fsync_dir(path))  # concurrent renames into one folder: one fsync
        self._stripes = [threading.Lock() for _ in range(64)]
        self._dir_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending_ends: set[str] = set()
        # storage.on_conflict: what a re-send of a SOP instance with other content does (set by the Node).
        self.conflict_policy = KEEP_FIRST
        # retention.quarantine_max_mb: past it a refused dataset is not kept (set by the Node; None = no cap).
        self.quarantine_max_bytes: int | None = None
        self._quarantine_bytes: int | None = None  # bytes in var/quarantine, counted once, then kept up to date
        self._quarantine_lock = threading.Lock()
        self.dialect = "postgresql" if paths.database_url else "sqlite"
        if paths.database_url:
            from node.store import postgres

            self.db: Any = postgres.Connection(paths.database_url)
            if not read_only:
                for folder in (paths.var, paths.store, paths.tmp, paths.quarantine, paths.conflicts):
                    folder.mkdir(parents=True, exist_ok=True)
                schema.migrate(self.db, self.dialect)
            return
        if read_only:
            # Read-only tools (the status verb) never create folders or change the schema of a running node.
            self.db = sqlite3.connect(f"{paths.database.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                      timeout=30, isolation_level=None)
            return
        for folder in (paths.var, paths.store, paths.tmp, paths.quarantine, paths.conflicts):
            folder.mkdir(parents=True, exist_ok=True)
        # Writers in several processes (node.receiver_processes) take turns on this lock: a writer blocked in the
        # kernel is woken the moment the other commits, where SQLite's own busy handler would sleep 1, 2, 5, 10...
        # milliseconds between tries, several times the commit itself.
        self._write_lock = os.open(paths.var / "node.db.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.db = self._connect(paths.database)
        schema.migrate(self.db)

    def configure(self, on_conflict: str, quarantine_max_mb: float | None) -> None:
        """storage.on_conflict and retention.quarantine_max_mb (None: no cap), at start and on reload."""
        self.conflict_policy = on_conflict
        self.quarantine_max_bytes = None if quarantine_max_mb is None else int(quarantine_max_mb * (1 << 20))

    @property
    def schema_version(self) -> int:
        with self._db_lock:
            return schema.version(self.db, self.dialect)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we answer success (rule 1 of the design).
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def close(self) -> None:
        with self._db_lock:
            self.db.close()
            if self._write_lock is not None:
                os.close(self._write_lock)
                self._write_lock = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """Serialised write transaction on the shared connection (and, for SQLite, across processes)."""
        with self._db_lock:
            if self._write_lock is not None:
                fcntl.flock(self._write_lock, fcntl.LOCK_EX)
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
            finally:
                if self._write_lock is not None:
                    fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._db_lock:
            return list(self.db.execute(sql, params).fetchall())

    # ---------------------------------------------------------------- start-up

    def sweep_temp(self) -> int:
        """Remove temp files left by a crash (never acknowledged, so nothing is lost); return how many."""
        removed = 0
        for entry in self.paths.tmp.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed += 1
            elif entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        with self.transaction() as db:
            # No association survives a restart, so no study is still being delivered into.
            db.execute("DELETE FROM deliveries")
        if removed:
            log.info("Swept %d leftover temp file(s) from %s", removed, self.paths.tmp)
        return removed

    def reconcile(self) -> int:
        """Quarantine store files without an index row (renamed in before a crash, never acknowledged).

        Run at start, before anything can ingest: a file is renamed into place before its row is committed, so
        while instances arrive a file without a row may be one about to be acknowledged.
        """
        moved = 0
        if not self.paths.store.is_dir():
            return 0
        for study_dir in os.scandir(self.paths.store):
            if not study_dir.is_dir(follow_symlinks=False):
                continue
            for series_dir in os.scandir(study_dir.path):
                if not series_dir.is_dir(follow_symlinks=False):
                    continue
                indexed = {
                    str(p) for (p,) in self.query("SELECT path FROM instances WHERE series_uid=?", (series_dir.name,))
                }
                for entry in os.scandir(series_dir.path):
                    path = Path(entry.path)
                    if entry.is_file(follow_symlinks=False) and str(path.relative_to(self.paths.var)) not in indexed:
                        self._quarantine(path, "in the store without an index row: never acknowledged (crash "
                                               "between the rename and the index commit)", Origin(calling_ae="recovery"))
                        moved += 1
        if moved:
            log.warning("Moved %d unacknowledged file(s) left by a crash from the store to quarantine", moved)
        return moved

    def new_temp_path(self, suffix: str = ".dcm") -> Path:
        fd, name = _mkstemp(self.paths.tmp, suffix)
        os.close(fd)
        return Path(name)

    # ---------------------------------------------------------------- ingest

    def ingest(
        self,
        tmp: Path,
        origin: Origin,
        expected_sop_uid: str | None = None,
        expected_sop_class: str | None = None,
        transfer_syntax: str | None = None,
    ) -> StoreResult:
        """Move a received Part 10 temp file into the store durably and index it; raise StoreError otherwise.

        The temp file is consumed in every case: stored, deduplicated, kept as conflict, or quarantined.
        """
        try:
            header, ts, truncated, sha = _parse(tmp, transfer_syntax)
        except OSError as exc:  # the dataset is not to blame: out of resources, and nothing kept
            tmp.unlink(missing_ok=True)
            raise StoreError(STATUS_STORE_FAILED, f"could not read the received dataset: {exc}") from None
        except ValueError as exc:  # reader.ReadError: malformed
            self._quarantine(tmp, f"cannot parse dataset: {exc}", origin)
            raise StoreError(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {exc}") from None
        if truncated:
            self._quarantine(tmp, truncated, origin)
            raise StoreError(STATUS_CANNOT_UNDERSTAND, truncated)
        uids = {k: header[k] for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID")}
        for key, value in uids.items():
            # Legacy UIDs (leading zeros in a component) are kept: digits and dots are still safe names, and an
            # old study must be pullable; the manifest flags them.
            problem = uid_problem(str(value) if value is not None else None, allow_legacy=True)
            if problem:
                reason = f"{key} {problem}"
                self._quarantine(tmp, reason, origin)
                raise StoreError(STATUS_INVALID_UIDS, reason)
        sop_uid, series_uid, study_uid = (
            str(uids["SOPInstanceUID"]),
            str(uids["SeriesInstanceUID"]),
            str(uids["StudyInstanceUID"]),
        )
        if expected_sop_uid is not None and sop_uid != expected_sop_uid:
            reason = f"dataset SOPInstanceUID {sop_uid} differs from the command's {expected_sop_uid}"
            self._quarantine(tmp, reason, origin)
            raise StoreError(STATUS_UID_MISMATCH, reason)
        if expected_sop_class is not None and str(uids["SOPClassUID"]) != expected_sop_class:
            reason = f"dataset SOPClassUID {uids['SOPClassUID']} differs from the command's {expected_sop_class}"
            self._quarantine(tmp, reason, origin)
            raise StoreError(STATUS_UID_MISMATCH, reason)

        try:
            size = tmp.stat().st_size
            fsync_file(tmp)
            series_dir = self._ensure_dir(self.paths.store / study_uid / series_uid)
            dest = series_dir / f"{sop_uid}.dcm"
            with self._stripes[hash(sop_uid) % len(self._stripes)]:
                if dest.exists() or self.query("SELECT 1 FROM instances WHERE sop_uid=?", (sop_uid,)):
                    # Stored already (perhaps under another study or series: a corrected re-send).
                    return self._duplicate(tmp, dest, sha, size, header, ts, origin)
                os.rename(tmp, dest)
            self._dir_sync.after_rename(series_dir)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.error("Could not write instance %s: %s", sop_uid, exc)
            raise StoreError(STATUS_STORE_FAILED, f"could not write: {exc}") from None
        try:
            self._index(dest, sha, size, header, ts, origin)
        except DB_ERRORS as exc:  # e.g. "database or disk is full": not acknowledged, so not kept
            with contextlib.suppress(OSError):
                dest.unlink()
                fsync_dir(dest.parent)
            log.error("Could not index instance %s: %s", sop_uid, exc)
            raise StoreError(STATUS_OUT_OF_RESOURCES, f"could not index: {exc}") from None
        return StoreResult(sop_uid, study_uid, series_uid, dest)

    def _duplicate(
        self, tmp: Path, dest: Path, sha: str, size: int, header: dict[str, Any], ts: str, origin: Origin
    ) -> StoreResult:
        sop_uid = str(header["SOPInstanceUID"])
        row = self.query("SELECT sha256 FROM instances WHERE sop_uid=?", (sop_uid,))
        study_uid, series_uid = str(header["StudyInstanceUID"]), str(header["SeriesInstanceUID"])
        if not row and dest.exists() and dataset_sha256(dest) != sha:
            # A file without an index row was renamed in before a crash and never acknowledged: it does not
            # count. The instance arriving now replaces it and is the one acknowledged.
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            self._index(dest, sha, size, header, ts, origin)
            log.warning("Instance %s replaced an unacknowledged copy left by a crash", sop_uid)
            return StoreResult(sop_uid, study_uid, series_uid, dest)
        existing_sha = row[0][0] if row else sha
        if existing_sha != sha and self.conflict_policy == NEWEST_WINS:
            return self._replace(tmp, dest, sha, size, header, ts, origin)
        if existing_sha == sha:
            tmp.unlink(missing_ok=True)
            if not row:
                # Stored before a crash but never indexed (so never acknowledged): index it now.
                self._index(dest, sha, size, header, ts, origin)
            else:
                self._touch_study(study_uid, header, origin)
            log.debug("Duplicate of %s with identical content: idempotent", sop_uid)
            return StoreResult(sop_uid, study_uid, series_uid, dest, duplicate=True)
        conflict_dir = self._ensure_dir(self.paths.conflicts / sop_uid)
        target = conflict_dir / f"{sha}.dcm"
        if target.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.rename(tmp, target)
            fsync_dir(conflict_dir)
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO conflicts(sop_uid, sha256, path, calling_ae, received_at) VALUES (?,?,?,?,?)",
                (sop_uid, sha, str(target.relative_to(self.paths.var)), origin.calling_ae, _now_iso()),
            )
        log.warning(
            "Conflict: SOP instance %s received again from %s with different content; kept as %s",
            sop_uid,
            origin.calling_ae or "?",
            target.relative_to(self.paths.var),
        )
        return StoreResult(sop_uid, study_uid, series_uid, target, conflict=True)

    def _replace(
        self, tmp: Path, dest: Path, sha: str, size: int, header: dict[str, Any], ts: str, origin: Origin
    ) -> StoreResult:
        """newest_wins: the new copy takes the stored one's place; the old moves to conflicts/ and both its
        study and the new one are touched, so a processed study is processed again from the corrected data."""
        sop_uid = str(header["SOPInstanceUID"])
        study_uid, series_uid = str(header["StudyInstanceUID"]), str(header["SeriesInstanceUID"])
        old_rel, old_sha, old_study, old_ae, old_at = self.query(
            "SELECT path, sha256, study_uid, calling_ae, received_at FROM instances WHERE sop_uid=?", (sop_uid,))[0]
        old_path = self.paths.var / str(old_rel)
        conflict_dir = self._ensure_dir(self.paths.conflicts / sop_uid)
        kept = conflict_dir / f"{old_sha}.dcm"
        if old_path.exists():
            os.replace(old_path, kept)  # same file system: atomic; the store never holds both copies
            fsync_dir(conflict_dir)
            fsync_dir(old_path.parent)
        dest_dir = self._ensure_dir(dest.parent)
        os.replace(tmp, dest)
        fsync_dir(dest_dir)
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO conflicts(sop_uid, sha256, path, calling_ae, received_at) VALUES (?,?,?,?,?)",
                       (sop_uid, old_sha, str(kept.relative_to(self.paths.var)), old_ae, old_at))
            db.execute("DELETE FROM instances WHERE sop_uid=?", (sop_uid,))
            if old_study != study_uid:
                db.execute("UPDATE studies SET n_instances=MAX(0, n_instances-1), last_received=? WHERE study_uid=?",
                           (now, old_study))
            else:
                db.execute("UPDATE studies SET n_instances=MAX(0, n_instances-1) WHERE study_uid=?", (study_uid,))
        self._index(dest, sha, size, header, ts, origin)
        with self.transaction() as db:
            # The study's identifiers follow the correction (folder names, request status, the workbook).
            db.execute("UPDATE studies SET patient_id=?, accession=?, study_date=? WHERE study_uid=?",
                       (_text(header.get("PatientID")), _text(header.get("AccessionNumber")),
                        _text(header.get("StudyDate")), study_uid))
        log.warning("Conflict: SOP instance %s received again from %s with different content; the new copy replaces "
                    "the stored one (storage.on_conflict newest_wins), the old is kept as %s", sop_uid,
                    origin.calling_ae or "?", kept.relative_to(self.paths.var))
        return StoreResult(sop_uid, study_uid, series_uid, dest, conflict=True)

    def _ensure_dir(self, path: Path) -> Path:
        """Create path (and parents) making each new directory entry durable."""
        if path.is_dir():
            return path
        with self._dir_lock:
            missing = []
            p = path
            while not p.exists():
                missing.append(p)
                p = p.parent
            for d in reversed(missing):
                d.mkdir(exist_ok=True)
                fsync_dir(d.parent)
        return path

    def _index(self, dest: Path, sha: str, size: int, header: dict[str, Any], ts: str, origin: Origin) -> None:
        """Index a stored instance; returns once the row is committed (with those of concurrent C-STOREs)."""
        self._group.run(lambda db: self._index_rows(db, dest, sha, size, header, ts, origin))

    def _index_rows(self, db: Any, dest: Path, sha: str, size: int, header: dict[str, Any], ts: str,
                    origin: Origin) -> None:
        now = time.time()
        study_uid = str(header["StudyInstanceUID"])
        cur = db.execute(
            "INSERT OR IGNORE INTO instances(sop_uid, sop_class_uid, transfer_syntax, study_uid, series_uid,"
            " series_number, instance_number, modality, path, size, sha256, calling_ae, peer_ip, assoc_id,"
            " received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                str(header["SOPInstanceUID"]),
                str(header["SOPClassUID"]),
                ts,
                study_uid,
                str(header["SeriesInstanceUID"]),
                _int_or_none(header.get("SeriesNumber")),
                _int_or_none(header.get("InstanceNumber")),
                _text(header.get("Modality")),
                str(dest.relative_to(self.paths.var)),
                size,
                sha,
                origin.calling_ae,
                origin.peer_ip,
                origin.assoc_id,
                _now_iso(),
            ),
        )
        added = cur.rowcount
        db.execute(
            "INSERT INTO studies(study_uid, patient_id, accession, study_date, first_received, last_received,"
            " n_instances, state, state_changed) VALUES (?,?,?,?,?,?,?, 'receiving', ?)"
            " ON CONFLICT(study_uid) DO UPDATE SET last_received=excluded.last_received,"
            " n_instances=studies.n_instances+excluded.n_instances",
            (
                study_uid,
                _text(header.get("PatientID")),
                _text(header.get("AccessionNumber")),
                _text(header.get("StudyDate")),
                now,
                now,
                added,
                now,
            ),
        )
        if origin.assoc_id:
            db.execute("INSERT OR IGNORE INTO deliveries(study_uid, assoc_id) VALUES (?,?)", (study_uid, origin.assoc_id))

    def _touch_study(self, study_uid: str, header: dict[str, Any], origin: Origin) -> None:
        with self.transaction() as db:
            db.execute("UPDATE studies SET last_received=? WHERE study_uid=?", (time.time(), study_uid))
            if origin.assoc_id:
                db.execute("INSERT OR IGNORE INTO deliveries(study_uid, assoc_id) VALUES (?,?)", (study_uid, origin.assoc_id))

    def end_delivery(self, assoc_id: str) -> None:
        """An association ended: it no longer delivers into any study.

        When the database cannot be written (disk full), the end is remembered and written by the next
        close_pending_deliveries(): a study must not wait for its hard cap because of one failed delete.
        """
        with self._pending_lock:
            self._pending_ends.add(assoc_id)
        self.close_pending_deliveries()

    def end_deliveries_of(self, assoc_prefix: str) -> int:
        """A receiver process died: none of its associations (ids starting with its prefix) delivers any more."""
        if not assoc_prefix or not assoc_prefix.isalnum():
            raise ValueError(f"association prefix {assoc_prefix!r} must be letters and digits")
        with self.transaction() as db:
            return int(db.execute("DELETE FROM deliveries WHERE substr(assoc_id, 1, ?)=?",
                                  (len(assoc_prefix), assoc_prefix)).rowcount)

    def close_pending_deliveries(self) -> None:
        with self._pending_lock:
            pending = sorted(self._pending_ends)
        if not pending:
            return
        try:
            with self.transaction() as db:
                db.executemany("DELETE FROM deliveries WHERE assoc_id=?", [(a,) for a in pending])
        except DB_ERRORS as exc:
            log.warning("Could not close %d delivery record(s) yet (%s); retrying at the next pass", len(pending), exc)
            return
        with self._pending_lock:
            self._pending_ends.difference_update(pending)

    def quarantine_bytes(self, recount: bool = False) -> int:
        """Bytes held in var/quarantine (counted from disk once, or again after retention deleted some)."""
        with self._quarantine_lock:
            if self._quarantine_bytes is None or recount:
                total = 0
                with os.scandir(self.paths.quarantine) as entries:
                    for entry in entries:
                        with contextlib.suppress(OSError):
                            total += entry.stat(follow_symlinks=False).st_size
                self._quarantine_bytes = total
            return self._quarantine_bytes

    def _quarantine(self, tmp: Path, reason: str, origin: Origin) -> None:
        """Keep a refused dataset with its reason, never crash on it; past the cap only the reason is kept."""
        try:
            sha = file_sha256(tmp) if tmp.exists() else "missing"
            target = self.paths.quarantine / f"{sha}.dcm"
            if tmp.exists():
                size = tmp.stat().st_size
                cap = self.quarantine_max_bytes
                if cap is not None and self.quarantine_bytes() + size > cap:
                    # A flood of bad data must not fill the disk and trip the disk guard for good data.
                    tmp.unlink(missing_ok=True)
                    reason += " (dataset not kept: var/quarantine is above retention.quarantine_max_mb)"
                else:
                    os.replace(tmp, target)
                    with self._quarantine_lock:
                        if self._quarantine_bytes is not None:
                            self._quarantine_bytes += size
            reason_file = self.paths.quarantine / f"{sha}.reason.txt"
            reason_file.write_text(
                f"reason: {reason}\ncalling_ae: {origin.calling_ae}\npeer_ip: {origin.peer_ip}\nreceived_at: {_now_iso()}\n",
                encoding="utf-8",
            )
            fsync_dir(self.paths.quarantine)
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO quarantine(path, reason, calling_ae, peer_ip, received_at) VALUES (?,?,?,?,?)",
                    (str(target.relative_to(self.paths.var)), reason, origin.calling_ae, origin.peer_ip, _now_iso()),
                )
            log.warning("Quarantined a dataset from %s: %s", origin.calling_ae or "?", reason)
        except OSError as exc:
            log.error("Could not quarantine %s (%s): %s", tmp, reason, exc)
            tmp.unlink(missing_ok=True)

    # ---------------------------------------------------------------- queries

    def recent_quarantine(self, last: int) -> list[tuple[str, str, str]]:
        """(when, calling AE, reason) of the last datasets put in quarantine, newest first."""
        rows = self.query("SELECT received_at, calling_ae, reason FROM quarantine ORDER BY id DESC LIMIT ?", (last,))
        return [(str(w), str(a or ""), str(r)) for w, a, r in rows]

    def instance_count(self, study_uid: str | None = None) -> int:
        if study_uid is None:
            return int(self.query("SELECT COUNT(*) FROM instances")[0][0])
        return int(self.query("SELECT COUNT(*) FROM instances WHERE study_uid=?", (study_uid,))[0][0])

    def study(self, study_uid: str) -> dict[str, Any] | None:
        with self._db_lock:
            cur = self.db.execute("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
            row = cur.fetchone()
            if row is None:
                return None
            names = [d[0] for d in cur.description]
        study = dict(zip(names, row, strict=True))
        study["open_deliveries"] = self.query("SELECT COUNT(*) FROM deliveries WHERE study_uid=?", (study_uid,))[0][0]
        return study


def _parse(tmp: Path, transfer_syntax: str | None) -> tuple[dict[str, Any], str, str | None, str]:
    """Key values, transfer syntax, truncation verdict and dataset SHA-256 of a Part 10 file, in one read."""
    with tmp.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        offset = reader.dataset_offset(mm)
        ts = transfer_syntax or (reader.parse_meta(mm).transfer_syntax if offset else "")
        sha = _sha256_of_mapping(mm, offset)
        # ReadError (a ValueError) means malformed: the caller quarantines it. No unbounded fallback
        # reader: a hostile "dataset" of zeros must cost microseconds, not minutes.
        scanned = reader.walk(mm, ts, offset, wanted=_HEADER_TAGS, strict=True)
        header: dict[str, Any] = {k: None for k in _HEADER_TAGS.values()}
        for tag, element in scanned.elements.items():
            header[_HEADER_TAGS[tag]] = reader.text(mm, element)
        truncated = scanned.truncated
    return header, ts, truncated, sha


def _sha256_of_mapping(mm: mmap.mmap, offset: int, step: int = 8 << 20) -> str:
    """SHA-256 of mm[offset:], dropping each hashed stretch from our resident set as we go.

    Hashing a mapping in one call faults every page of the file into the process: a 300 MB instance would
    add 300 MB to the node's RSS. The pages stay in the page cache; only our mapping of them is released.
    """
    h = hashlib.sha256()
    with memoryview(mm) as whole:
        pos = offset
        while pos < len(mm):
            end = min(len(mm), pos + step)
            h.update(whole[pos:end])
            start = pos - pos % mmap.PAGESIZE
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
            pos = end
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a whole file, read in chunks (a refused dataset may be hundreds of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mkstemp(folder: Path, suffix: str) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder, suffix=suffix, prefix="rx-")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None
