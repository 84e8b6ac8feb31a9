"""Study state: the one writer of studies.state (receiving -> complete -> processing -> done|failed, reopened).

Every transition is one guarded UPDATE, so two actors can never both move a study from the same state.
The ready markers that signal a complete study to the processor are files, written by node.process.completion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from node.store.store import Store


class StudyState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    REOPENED = "reopened"
    DISCARDED = "discarded"


# States a study leaves when instances arrive after its snapshot (it is processed again).
FINISHED = (StudyState.DONE, StudyState.FAILED, StudyState.DISCARDED)
_SETTABLE = frozenset({"outbox_path", "attempts", "snapshot_received"})


@dataclass(frozen=True)
class Candidate:
    """A study still receiving, with what the completion rules need to decide on it."""

    study_uid: str
    started: float  # first instance, or the reopening
    last_received: float
    cap_logged: bool
    open_deliveries: int
    pulls: int


@dataclass(frozen=True)
class Claimable:
    """A study's identity for naming its outbox folder, and whether it can be claimed at a version."""

    state: str
    version: int
    patient_id: str | None
    study_date: str | None
    accession: str | None
    outbox_path: str | None


@dataclass(frozen=True)
class Interrupted:
    """A study left `processing` by a stop or crash."""

    study_uid: str
    version: int
    outbox_path: str | None
    may_be_incomplete: bool
    reason: str


def mark_complete(store: Store, study_uid: str, reason: str, may_be_incomplete: bool = False) -> int | None:
    """receiving|reopened -> complete at a new version; None when the study is not in a completable state."""
    now = time.time()
    with store.transaction() as db:
        row = db.execute(
            "SELECT state, version, last_received, n_instances FROM studies WHERE study_uid=?", (study_uid,)
        ).fetchone()
        if row is None or row[0] not in (StudyState.RECEIVING, StudyState.REOPENED):
            return None
        version = int(row[1]) + 1
        db.execute(
            "UPDATE studies SET state=?, version=?, state_changed=?, snapshot_received=?, snapshot_instances=?,"
            " may_be_incomplete=?, reason=?, cap_logged=0 WHERE study_uid=?",
            (StudyState.COMPLETE, version, now, row[2], row[3], int(may_be_incomplete), reason, study_uid),
        )
    return version


def set_state(store: Store, study_uid: str, state: StudyState, reason: str | None = None, **extra: Any) -> None:
    """Set a study's state unconditionally (the outcome of processing, a discard, a reopening)."""
    unknown = set(extra) - _SETTABLE
    if unknown:
        raise ValueError(f"not settable: {sorted(unknown)}")
    columns = "".join(f", {k}=?" for k in extra)
    sql = f"UPDATE studies SET state=?, state_changed=?, reason=?{columns} WHERE study_uid=?"  # noqa: S608 - fixed column names
    with store.transaction() as db:
        db.execute(sql, (state, time.time(), reason, *extra.values(), study_uid))


def claim(store: Store, study_uid: str, version: int, folder: str, alternative: str) -> str | None:
    """complete -> processing for exactly this version (one attempt more), reserving its outbox folder.

    The folder is `folder` unless another study holds it, then `alternative`; the check and the reservation
    are one transaction, so two studies claimed at the same time never get the same folder. Returns the
    reserved folder, or None when someone else has the claim.
    """
    with store.transaction() as db:
        taken = db.execute("SELECT 1 FROM studies WHERE outbox_path=? AND study_uid<>?", (folder, study_uid)).fetchone()
        chosen = alternative if taken else folder
        cur = db.execute(
            "UPDATE studies SET state=?, state_changed=?, attempts=attempts+1, outbox_path=?"
            " WHERE study_uid=? AND state=? AND version=?",
            (StudyState.PROCESSING, time.time(), chosen, study_uid, StudyState.COMPLETE, version),
        )
        return chosen if cur.rowcount == 1 else None


def attempts(store: Store, study_uid: str) -> int:
    """How many times processing of the study was started."""
    rows = store.query("SELECT attempts FROM studies WHERE study_uid=?", (study_uid,))
    return int(rows[0][0]) if rows else 0


def requeue(store: Store, study_uid: str) -> None:
    """processing -> complete: an interrupted run is done again at the same version."""
    with store.transaction() as db:
        db.execute(
            "UPDATE studies SET state=?, state_changed=? WHERE study_uid=? AND state=?",
            (StudyState.COMPLETE, time.time(), study_uid, StudyState.PROCESSING),
        )


def reopen_late(store: Store) -> tuple[list[str], list[str]]:
    """finished -> reopened for every study whose instances arrived after its snapshot.

    A study whose DICOM retention already deleted is reopened only once the store holds at least as many
    instances as its published version was built from: a few late instances alone would rebuild its outputs
    from less and replace the complete ones. Until then the outputs are kept and the reason says so.
    Returns (reopened, kept) study UIDs.
    """
    reopened, kept = [], []
    with store.transaction() as db:
        rows = db.execute(
            "SELECT study_uid, store_purged, n_instances, COALESCE(snapshot_instances, 0), version FROM studies"
            " WHERE state IN (?, ?, ?) AND last_received > COALESCE(snapshot_received, 0)",
            FINISHED,
        ).fetchall()
        for study_uid, purged, n_instances, snapshot_instances, version in rows:
            if purged is not None and int(n_instances) < int(snapshot_instances):
                db.execute(
                    "UPDATE studies SET snapshot_received=last_received, reason=? WHERE study_uid=?",
                    (f"late instance(s) after retention deleted the DICOM: the outputs of version {version} "
                     f"({snapshot_instances} instances) are kept; {n_instances} instance(s) in the store now",
                     study_uid),
                )
                kept.append(str(study_uid))
                continue
            db.execute(
                "UPDATE studies SET state=?, state_changed=?, reason=?, store_purged=NULL WHERE study_uid=?",
                (StudyState.REOPENED, time.time(), "late instances arrived", study_uid),
            )
            reopened.append(str(study_uid))
    return reopened, kept


def note_cap_logged(store: Store, study_uid: str) -> None:
    with store.transaction() as db:
        db.execute("UPDATE studies SET cap_logged=1 WHERE study_uid=?", (study_uid,))


def candidates(store: Store) -> list[Candidate]:
    """Studies still receiving (or reopened), with their open deliveries and the requests pulling them."""
    rows = store.query(
        "SELECT s.study_uid, CASE WHEN s.state=? THEN s.state_changed ELSE s.first_received END,"
        " s.last_received, s.cap_logged,"
        " (SELECT COUNT(*) FROM deliveries d WHERE d.study_uid=s.study_uid),"
        " (SELECT COUNT(*) FROM pulls p WHERE p.study_uid=s.study_uid)"
        " FROM studies s WHERE s.state IN (?, ?)",
        (StudyState.REOPENED, StudyState.RECEIVING, StudyState.REOPENED),
    )
    return [Candidate(str(u), float(f), float(last), bool(c), int(d), int(p)) for u, f, last, c, d, p in rows]


def claimable(store: Store, study_uid: str) -> Claimable | None:
    rows = store.query(
        "SELECT state, version, patient_id, study_date, accession, outbox_path FROM studies WHERE study_uid=?",
        (study_uid,),
    )
    if not rows:
        return None
    state, version, patient_id, study_date, accession, outbox_path = rows[0]
    return Claimable(str(state), int(version), patient_id, study_date, accession, outbox_path)


def folder_taken(store: Store, folder: str, study_uid: str) -> bool:
    """Whether another study already publishes into this outbox folder."""
    return bool(store.query("SELECT 1 FROM studies WHERE outbox_path=? AND study_uid<>?", (folder, study_uid)))


def interrupted(store: Store) -> list[Interrupted]:
    rows = store.query(
        "SELECT study_uid, version, outbox_path, may_be_incomplete, reason FROM studies WHERE state=?",
        (StudyState.PROCESSING,),
    )
    return [Interrupted(str(u), int(v), p, bool(i), str(r or "")) for u, v, p, i, r in rows]


def awaiting_processing(store: Store) -> list[Interrupted]:
    """Studies `complete` (decided, not yet claimed by the processor), with the version to process."""
    rows = store.query(
        "SELECT study_uid, version, outbox_path, may_be_incomplete, reason FROM studies WHERE state=?",
        (StudyState.COMPLETE,),
    )
    return [Interrupted(str(u), int(v), p, bool(i), str(r or "")) for u, v, p, i, r in rows]


@dataclass(frozen=True)
class StudyRecord:
    """One study as the index knows it (what the web pages list and show)."""

    study_uid: str
    patient_id: str | None
    accession: str | None
    study_date: str | None
    instances: int
    state: str
    reason: str | None
    outbox_path: str | None
    may_be_incomplete: bool
    last_received: float


_RECORD = ("SELECT study_uid, patient_id, accession, study_date, n_instances, state, reason, outbox_path,"
           " may_be_incomplete, last_received FROM studies")


def _record(row: tuple[Any, ...]) -> StudyRecord:
    u, p, a, d, n, st, r, o, inc, t = row
    return StudyRecord(str(u), p, a, d, int(n), str(st), r, o, bool(inc), float(t))


def recent_studies(store: Store, limit: int) -> list[StudyRecord]:
    """The studies last received into, newest first."""
    return [_record(r) for r in store.query(_RECORD + " ORDER BY last_received DESC LIMIT ?", (limit,))]


def study_record(store: Store, study_uid: str) -> StudyRecord | None:
    rows = store.query(_RECORD + " WHERE study_uid=?", (study_uid,))
    return _record(rows[0]) if rows else None


def series_counts(store: Store, study_uid: str) -> list[tuple[str, int]]:
    """(series UID, instances held) of one study, by series UID."""
    return [(str(u), int(c)) for u, c in store.query(
        "SELECT series_uid, COUNT(*) FROM instances WHERE study_uid=? GROUP BY series_uid ORDER BY series_uid",
        (study_uid,))]


def state_of(store: Store, study_uid: str) -> str | None:
    rows = store.query("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
    return str(rows[0][0]) if rows else None


def counts(store: Store) -> dict[str, int]:
    """Studies per state."""
    return {str(s): int(n) for s, n in store.query("SELECT state, COUNT(*) FROM studies GROUP BY state")}


def claim_pull(store: Store, study_uid: str, owner: str) -> None:
    """A request is pulling this study: the idle timer must not complete it; the puller will."""
    with store.transaction() as db:
        db.execute("INSERT OR IGNORE INTO pulls(study_uid, owner) VALUES (?,?)", (study_uid, owner))


def release_pull(store: Store, study_uid: str, owner: str) -> None:
    with store.transaction() as db:
        db.execute("DELETE FROM pulls WHERE study_uid=? AND owner=?", (study_uid, owner))


def requested_outputs(store: Store, study_uid: str) -> list[str]:
    """The raw `outputs` JSON of every request that pulled this study."""
    rows = store.query(
        "SELECT r.outputs FROM requests r JOIN request_studies rs ON rs.request_id=r.id WHERE rs.study_uid=?",
        (study_uid,),
    )
    return [str(raw or "[]") for (raw,) in rows]


def recent_failures(store: Store, last: int) -> list[tuple[str, str, str]]:
    """(when, study UID, reason) of the last failed studies, newest first."""
    rows = store.query(
        "SELECT datetime(state_changed, 'unixepoch'), study_uid, reason FROM studies WHERE state=?"
        " ORDER BY state_changed DESC LIMIT ?",
        (StudyState.FAILED, last),
    )
    return [(str(w), str(u), str(r or "")) for w, u, r in rows]
