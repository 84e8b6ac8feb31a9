"""Retention: delete the stored DICOM of done studies (keep | when done | after N days) and trim the outbox."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from node.background import Loop
from node.config import RetentionConfig
from node.store.pruning import Pruner
from node.store.state import StudyState
from node.store.store import Store

log = logging.getLogger(__name__)

DELETING_PREFIX = ".del-"
_DAY = 86400.0
# A folder of a study in these states may be replaced by the processor at any moment: never touch it.
_BUSY = (StudyState.COMPLETE, StudyState.PROCESSING)


class StorePolicy(StrEnum):
    KEEP = "keep"
    DELETE_WHEN_DONE = "delete_when_done"
    DELETE_AFTER_DAYS = "delete_after_days"


@dataclass
class RetentionResult:
    studies_purged: int = 0
    instances_deleted: int = 0
    folders_removed: int = 0
    bytes_freed: int = 0


@dataclass(frozen=True)
class _Folder:
    path: Path
    study_uid: str
    version: int
    published: float
    size: int


class Retention:
    """Applies the retention policy every `interval_s` on its own thread (or once, via run_once)."""

    def __init__(self, store: Store, outbox: Path, config: RetentionConfig, inbox: Path | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.config = config
        self.pruner = Pruner(store, outbox, inbox if inbox is not None else outbox.parent / "inbox")
        self._loop = Loop("retention", self._pass, lambda: self.config.interval_s, log, first_wait=True)
        self.health = self._loop.health

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._loop.stop(timeout)

    def _pass(self) -> None:
        self.run_once()

    def run_once(self, now: float | None = None) -> RetentionResult:
        """One pass: purge the store per `retention.store`, then trim the outbox per its caps."""
        now = time.time() if now is None else now
        result = RetentionResult()
        self.purge_store(now, result)
        self.trim_outbox(now, result)
        self.pruner.run(self.config, now)
        if result.studies_purged or result.folders_removed:
            log.info(
                "Retention: DICOM of %d study(ies) deleted (%d instance(s)); %d outbox folder(s) removed (%.1f MB)",
                result.studies_purged,
                result.instances_deleted,
                result.folders_removed,
                result.bytes_freed / 1e6,
            )
        return result

    # ------------------------------------------------------------ store

    def purge_store(self, now: float, result: RetentionResult) -> None:
        policy = StorePolicy(self.config.store)
        if policy == StorePolicy.KEEP:
            return
        cutoff = now - self.config.store_days * _DAY if policy == StorePolicy.DELETE_AFTER_DAYS else float("inf")
        # Only done studies whose outputs were published, and with nothing received since that snapshot
        # (late instances reopen the study: completion must see them first).
        rows = self.store.query(
            "SELECT s.study_uid, s.last_received FROM studies s WHERE s.state=? AND s.outbox_path IS NOT NULL"
            " AND s.last_received <= COALESCE(s.snapshot_received, 0) AND s.state_changed <= ?"
            " AND EXISTS (SELECT 1 FROM instances i WHERE i.study_uid=s.study_uid)",
            (StudyState.DONE, cutoff),
        )
        for study_uid, last_received in rows:
            deleted = self._purge_study(str(study_uid), float(last_received), now)
            if deleted:
                result.studies_purged += 1
                result.instances_deleted += deleted

    def _purge_study(self, study_uid: str, last_received: float, now: float) -> int:
        """Delete a study's files, then their index rows; the study row stays (state done, store_purged set)."""
        instances = self.store.query("SELECT sop_uid, path FROM instances WHERE study_uid=?", (study_uid,))
        var = self.store.paths.var
        for _sop, rel in instances:
            (var / str(rel)).unlink(missing_ok=True)
        with self.store.transaction() as db:
            row = db.execute("SELECT state, last_received FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            untouched = row is not None and row[0] == StudyState.DONE and float(row[1]) == last_received
            deleted = 0
            for sop_uid, rel in instances:
                # Something arrived while we deleted: keep the rows of files that are (again) on disk.
                if not untouched and (var / str(rel)).exists():
                    continue
                deleted += db.execute("DELETE FROM instances WHERE sop_uid=? AND study_uid=?", (sop_uid, study_uid)).rowcount
            db.execute(
                "UPDATE studies SET n_instances=MAX(n_instances-?, 0), store_purged=? WHERE study_uid=?",
                (deleted, now, study_uid),
            )
        # Empty series/study folders stay: the store caches the folders it created, and a late re-send
        # into a removed folder would fail until restart.
        log.info("Retention (%s): deleted the DICOM of study %s (%d instance(s))", self.config.store, study_uid, deleted)
        return deleted

    # ------------------------------------------------------------ outbox

    def trim_outbox(self, now: float, result: RetentionResult) -> None:
        max_gb, max_days = self.config.outbox_max_gb, self.config.outbox_max_age_days
        if (max_gb is None and max_days is None) or not self.outbox.is_dir():
            return
        total = 0
        candidates: list[_Folder] = []
        for entry in sorted(self.outbox.iterdir()):
            if entry.name.startswith(DELETING_PREFIX) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)  # our own half-finished deletion from a crash
                continue
            size = _tree_size(entry)
            total += size
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                continue  # staging folders of the processor, and anything that is not a study folder
            folder = _study_folder(entry, size)
            if folder is not None:
                candidates.append(folder)
        max_bytes = None if max_gb is None else int(max_gb * 1e9)
        for folder in sorted(candidates, key=lambda f: (f.published, f.path.name)):
            too_old = max_days is not None and now - folder.published > max_days * _DAY
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                continue
            if self._remove(folder):
                total -= folder.size
                result.folders_removed += 1
                result.bytes_freed += folder.size
                log.info(
                    "Retention: removed outbox/%s (%s, %.1f MB)",
                    folder.path.name,
                    "older than outbox_max_age_days" if too_old else "outbox above outbox_max_gb",
                    folder.size / 1e6,
                )

    def _busy(self, study_uid: str) -> bool:
        row = self.store.query("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
        return bool(row) and row[0][0] in _BUSY

    def _remove(self, folder: _Folder) -> bool:
        """Rename away, check it is still the version we chose, then delete; put it back if a publish raced us."""
        if self._busy(folder.study_uid):
            return False
        aside = folder.path.with_name(f"{DELETING_PREFIX}{folder.path.name}-{secrets.token_hex(4)}")
        try:
            os.rename(folder.path, aside)
        except OSError:
            return False
        moved = _study_folder(aside, folder.size)
        if moved is None or moved.version != folder.version or self._busy(folder.study_uid):
            try:
                os.rename(aside, folder.path)
            except OSError:
                log.error("Retention: a newer outbox/%s appeared while removing the old one; kept it", folder.path.name)
                shutil.rmtree(aside, ignore_errors=True)
            return False
        shutil.rmtree(aside, ignore_errors=True)
        return True


def _study_folder(path: Path, size: int) -> _Folder | None:
    """A published study folder (its manifest names the study); None for anything else, which is never touched."""
    manifest = path / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        published = manifest.stat().st_mtime
        return _Folder(path, str(data["study_uid"]), int(data.get("version", 0)), published, size)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tree_size(path: Path) -> int:
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path, followlinks=False):
        for name in filenames:
            try:
                total += (Path(dirpath) / name).lstat().st_size
            except OSError:
                continue
    return total
