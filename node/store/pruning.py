"""Pruning: what the node keeps beside the studies is deleted once it is old (quarantine, conflicts, finished
requests, forgotten study rows), so a node that runs for years does not grow without bound.

Run by Retention on its pass. Files go before their index rows, so a crash in between leaves rows pointing at
nothing (removed at the next pass), never files nobody knows of.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from node.config import RetentionConfig
from node.store.store import Store

log = logging.getLogger(__name__)

_DAY = 86400.0
_FINISHED_REQUESTS = ("done", "failed")
_FINISHED_STUDIES = ("done", "failed", "discarded")


@dataclass
class PruneResult:
    quarantined: int = 0
    conflicts: int = 0
    requests: int = 0
    studies: int = 0
    bytes_freed: int = 0

    def __bool__(self) -> bool:
        return bool(self.quarantined or self.conflicts or self.requests or self.studies)


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0  # unreadable: treated as old


def _remove_empty(study_dir: Path) -> None:
    """Remove a study's empty series folders and its folder; rmdir only, so a file that arrived meanwhile stays."""
    with contextlib.suppress(OSError):
        for series in study_dir.iterdir():
            with contextlib.suppress(OSError):
                series.rmdir()
        study_dir.rmdir()


def _unlink(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except OSError:
        return 0
    return size


class Pruner:
    def __init__(self, store: Store, outbox: Path, inbox: Path) -> None:
        self.store = store
        self.outbox = outbox
        self.inbox = inbox

    def run(self, config: RetentionConfig, now: float) -> PruneResult:
        result = PruneResult()
        self.quarantine(config, now, result)
        self.conflicts(config, now, result)
        self.requests(config, now, result)
        self.studies(config, now, result)
        if result:
            log.info("Pruned %d quarantined dataset(s), %d conflict copies, %d finished request(s), %d study row(s)"
                     " (%.1f MB)", result.quarantined, result.conflicts, result.requests, result.studies,
                     result.bytes_freed / 1e6)
        return result

    def quarantine(self, config: RetentionConfig, now: float, result: PruneResult) -> None:
        """Older than quarantine_days; then the oldest while the folder is above quarantine_max_mb."""
        var = self.store.paths.var
        rows = self.store.query("SELECT id, path, received_at FROM quarantine ORDER BY id")
        days, cap_mb = config.quarantine_days, config.quarantine_max_mb
        total = self.store.quarantine_bytes(recount=True)
        cap = None if cap_mb is None else int(cap_mb * (1 << 20))
        doomed: list[tuple[int, str]] = []
        for rid, rel, received in rows:
            old = days is not None and now - _epoch(str(received)) > days * _DAY
            if old or (cap is not None and total > cap):
                doomed.append((int(rid), str(rel)))
                path = var / str(rel)
                with contextlib.suppress(OSError):
                    total -= path.stat().st_size
        if not doomed:
            return
        gone = {rel for _, rel in doomed}
        with self.store.transaction() as db:
            db.executemany("DELETE FROM quarantine WHERE id=?", [(rid,) for rid, _ in doomed])
        still = {str(r) for (r,) in self.store.query("SELECT path FROM quarantine")}
        for rel in gone - still:  # the same content refused twice shares one file: kept while a row needs it
            path = var / rel
            result.bytes_freed += _unlink(path)
            _unlink(path.with_suffix(".reason.txt"))
        result.quarantined += len(doomed)
        self.store.quarantine_bytes(recount=True)

    def conflicts(self, config: RetentionConfig, now: float, result: PruneResult) -> None:
        days = config.conflicts_days
        if days is None:
            return
        var = self.store.paths.var
        doomed = [(str(sop), str(sha), str(rel)) for sop, sha, rel, received in
                  self.store.query("SELECT sop_uid, sha256, path, received_at FROM conflicts")
                  if now - _epoch(str(received)) > days * _DAY]
        for _sop, _sha, rel in doomed:
            path = var / rel
            result.bytes_freed += _unlink(path)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # var/conflicts/<SOP UID>/ once empty
        if doomed:
            with self.store.transaction() as db:
                db.executemany("DELETE FROM conflicts WHERE sop_uid=? AND sha256=?", [(s, h) for s, h, _ in doomed])
            result.conflicts += len(doomed)

    def requests(self, config: RetentionConfig, now: float, result: PruneResult) -> None:
        days = config.requests_days
        if days is None:
            return
        rows = self.store.query(
            "SELECT id, name, file_name, file_location FROM requests WHERE state IN (?, ?) AND updated < ?",
            (*_FINISHED_REQUESTS, now - days * _DAY))
        for rid, name, file_name, location in rows:
            status = self.outbox / "requests" / f"{name}.status.yaml"
            result.bytes_freed += _unlink(status)
            if location in ("done", "failed"):
                request_file = self.inbox / str(location) / str(file_name)
                result.bytes_freed += _unlink(request_file)
                _unlink(request_file.with_name(request_file.name + ".error.txt"))
            with self.store.transaction() as db:
                for table in ("request_series", "request_studies", "request_queries"):
                    db.execute(f"DELETE FROM {table} WHERE request_id=?", (rid,))  # noqa: S608 - fixed names
                db.execute("DELETE FROM requests WHERE id=?", (rid,))
            result.requests += 1

    def studies(self, config: RetentionConfig, now: float, result: PruneResult) -> None:
        """Rows of studies with nothing left: DICOM deleted, outbox folder gone, no request refers to them.

        A study whose outputs still exist keeps its row: a late instance must not rebuild those outputs from
        less (the row remembers how many instances they were built from)."""
        days = config.studies_days
        if days is None:
            return
        rows = self.store.query(
            "SELECT s.study_uid, s.outbox_path FROM studies s WHERE s.state IN (?, ?, ?) AND s.state_changed < ?"
            " AND s.last_received < ? AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study_uid=s.study_uid)"
            " AND NOT EXISTS (SELECT 1 FROM request_studies r WHERE r.study_uid=s.study_uid)"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.study_uid=s.study_uid)",
            (*_FINISHED_STUDIES, now - days * _DAY, now - days * _DAY))
        forgotten = [str(uid) for uid, folder in rows if not folder or not (self.outbox / str(folder)).exists()]
        if not forgotten:
            return
        with self.store.transaction() as db:
            db.executemany("DELETE FROM studies WHERE study_uid=?", [(u,) for u in forgotten])
        for uid in forgotten:
            _remove_empty(self.store.paths.store / uid)
        result.studies += len(forgotten)
