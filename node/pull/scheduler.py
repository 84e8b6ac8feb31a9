"""Request execution: per study find, filter series, move, verify, gap-fill, complete; within peer limits and windows.

Longer than our ~450-line norm on purpose: one request's work items, their retries and the peer limits
are one state machine over the request tables; split, the transitions would be spread over modules.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from node import failpoints
from node.config import Config, PeerConfig, TimeWindow
from node.dicom import facts
from node.dicom.keywords import KeywordSet
from node.ops.metrics import Metrics
from node.process import completion
from node.pull import findsplit, scu
from node.pull.changes import RequestChanges
from node.pull.requests import Request, SeriesFilter, StudyQuery
from node.pull.scu import ErrorKind, MoveProgress, PeerAddress, ScuError, ScuSettings
from node.store import state as study_state
from node.store.store import Origin, Store, StoreError

log = logging.getLogger(__name__)



# Work-item states (request_queries / request_studies). 'complete' hands over to studies.state (the processor).
QUEUED, WAITING, QUERYING, MOVING, FOUND, COMPLETE, FAILED = (
    "queued", "waiting", "querying", "moving", "found", "complete", "failed")
_ACTIVE = (QUERYING, MOVING)
# Request states: running until every item is terminal; pulled = all arrived, waiting for processing.
R_QUEUED, R_RUNNING, R_PULLED, R_DONE, R_FAILED = "queued", "running", "pulled", "done", "failed"
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPACE_RETRY_S = 5.0
_NO_SPACE = "waiting for disk space: the node's disk is above storage.disk_high_water_pct (no attempt spent)"
CANCELLED = "cancelled by "  # how a request's reason starts once a user cancelled it (kept across restarts)
_IMAGE_MOVE_CHUNK = 500  # SOP Instance UIDs per IMAGE-level gap-fill move: keeps the identifier small


# ---------------------------------------------------------------------------------------------- time windows


def _hm(text: str) -> dtime:
    hours, minutes = text.split(":")
    return dtime(int(hours), int(minutes))


def _occurrences(now: datetime, window: TimeWindow, offsets: Sequence[int]) -> Iterator[tuple[datetime, datetime]]:
    for offset in offsets:
        day = now.date() + timedelta(days=offset)
        if _DAYS[day.weekday()] not in window.days:
            continue
        start = datetime.combine(day, _hm(window.start), tzinfo=now.tzinfo)
        end = datetime.combine(day, _hm(window.end), tzinfo=now.tzinfo)
        if end <= start:  # ends the next day (equal times: a 24-hour window)
            end += timedelta(days=1)
        yield start, end


def in_window(now: datetime, windows: Sequence[TimeWindow]) -> bool:
    """True if `now` (wall-clock time of its zone) is inside one of the windows; no windows = always open."""
    if not windows:
        return True
    return any(start <= now < end for w in windows for start, end in _occurrences(now, w, (-1, 0)))


def next_window_start(now: datetime, windows: Sequence[TimeWindow]) -> datetime | None:
    """`now` if a window is open, else the next window start within a week; None if there is none."""
    if in_window(now, windows):
        return now
    starts = [start for w in windows for start, _ in _occurrences(now, w, range(8)) if start > now]
    return min(starts, default=None)


def backoff_delay(attempt: int, base: float, maximum: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempt` (1-based): exponential, capped, with +-50 % jitter."""
    jitter = (rng or random).uniform(0.5, 1.5)
    return min(maximum, base * 2 ** max(0, attempt - 1)) * jitter


def _local_now() -> datetime:
    return datetime.now().astimezone()


class _Paused(Exception):
    """The item stops between series (window closed or node stopping) and resumes later without using an attempt."""

    def __init__(self, state: str, at: float, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.at = at
        self.reason = reason


def settings_for(config: Config, peer: PeerConfig) -> ScuSettings:
    return ScuSettings(
        calling_ae=config.node.ae_title,
        acse_timeout=peer.timeout_s,
        dimse_timeout=peer.dimse_timeout_s,
        network_timeout=peer.timeout_s,
        connect_timeout=min(10.0, peer.timeout_s),
        retrieve_timeout=peer.dimse_timeout_s,
    )


def address_of(peer: PeerConfig) -> PeerAddress:
    return PeerAddress(peer.ae_title, peer.host, peer.port)


def _facts_for(config: Config) -> facts.Vocabulary:
    return facts.Vocabulary(original_names=KeywordSet(config.requests.original_keywords))


def request_counts(store: Store) -> dict[str, int]:
    """Requests per state."""
    return {str(s): int(n) for s, n in store.query("SELECT state, COUNT(*) FROM requests GROUP BY state ORDER BY state")}


def recent_requests(store: Store, last: int) -> list[int]:
    """IDs of the last requests, newest first."""
    return [int(r) for (r,) in store.query("SELECT id FROM requests ORDER BY id DESC LIMIT ?", (last,))]


def request_file(store: Store, rid: int) -> tuple[str, str, str, str] | None:
    """(name, file name, file location, state) of one request, or None."""
    rows = store.query("SELECT name, file_name, file_location, state FROM requests WHERE id=?", (rid,))
    return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2]), str(rows[0][3])) if rows else None


def find_request(store: Store, which: str) -> tuple[int, str, str] | None:
    """(id, name, state) of the request named `which`, or numbered `which`; None when there is none."""
    rows = store.query("SELECT id, name, state FROM requests WHERE name=? OR CAST(id AS TEXT)=?", (which, which))
    return (int(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None


def recent_request_problems(store: Store, last: int) -> list[tuple[str, str]]:
    """(when, what) of the last failed requests and of the items waiting to retry after a failure, newest first."""
    rows: list[tuple[float, str]] = []
    for when, name, reason in store.query(
            "SELECT updated, name, reason FROM requests WHERE state=? ORDER BY updated DESC LIMIT ?", (R_FAILED, last)):
        rows.append((float(when), f"request {name} failed: {reason or 'see its status file'}"))
    for when, name, uid, attempts, reason in store.query(
            "SELECT COALESCE(rs.updated, r.updated), r.name, rs.study_uid, rs.attempts, rs.reason FROM request_studies rs"
            " JOIN requests r ON r.id=rs.request_id WHERE rs.attempts>0 AND rs.state IN (?, ?)"
            " ORDER BY rs.updated DESC LIMIT ?", (QUEUED, WAITING, last)):
        rows.append((float(when), f"request {name}: study {uid} retrying after {attempts} failed attempt(s): {reason}"))
    for when, name, query, attempts, reason in store.query(
            "SELECT r.updated, r.name, q.query, q.attempts, q.reason FROM request_queries q"
            " JOIN requests r ON r.id=q.request_id WHERE q.attempts>0 AND q.state IN (?, ?)"
            " ORDER BY r.updated DESC LIMIT ?", (QUEUED, WAITING, last)):
        rows.append((float(when), f"request {name}: query {query} retrying after {attempts} failed attempt(s): "
                                  f"{reason}"))
    rows.sort(key=lambda r: -r[0])
    return [(datetime.fromtimestamp(w, UTC).strftime("%Y-%m-%d %H:%M:%S"), text) for w, text in rows[:last]]


class Scheduler:
    """Runs request work items on an apscheduler thread pool, polite to each peer; all state lives in SQLite."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], datetime] = _local_now,
        on_change: Callable[[int], None] | None = None,
        dispatch_interval_s: float = 0.5,
        metrics: Metrics | None = None,
        space_ok: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        # Whether the node can store what it pulls (the disk guard): while it cannot, moves wait, at no attempt.
        self.space_ok = space_ok
        self.metrics = metrics
        self.store = store
        self.clock = clock  # aware local time; tests inject one to open a window "in two seconds"
        self.on_change = on_change
        self.dispatch_interval_s = dispatch_interval_s
        self.rng = random.Random()
        self._facts = _facts_for(config)
        self._lock = threading.Condition()
        self._running: set[tuple[str, int]] = set()
        self._running_studies: set[str] = set()
        self._inflight: dict[str, int] = {}
        self._moves: dict[str, int] = {}
        self._stopping = threading.Event()
        self._last_progress: dict[int, float] = {}
        self._dispatch_lock = threading.Lock()
        self.last_dispatch: float | None = None  # monotonic time of the dispatcher's last run (health)
        self._sched: BackgroundScheduler | None = None  # the periodic dispatcher
        self._pool: ThreadPoolExecutor | None = None  # the work items (SCU calls), never on the SCP's threads
        # Request state and status reports, coalesced on one thread (never on the work threads).
        self.changes = RequestChanges(store, self._report, (R_QUEUED, R_RUNNING, R_PULLED))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Resume interrupted work (a crash left items querying/moving) and start dispatching."""
        self._stopping.clear()
        self.resume_interrupted()
        self.changes.start()
        workers = min(8, max(2, sum(p.max_associations for p in self.config.peers.values())))
        # Work runs on a pool of our own: apscheduler's shutdown(wait=True) deadlocks against a running job that
        # adds a job, which is what a finished item starting the next one would do.
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="request")
        self._sched = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._sched.add_job(self.dispatch, "interval", seconds=self.dispatch_interval_s, id="dispatch",
                            next_run_time=datetime.now(UTC))
        self._sched.start()
        log.info("Request scheduler started (%d worker threads)", workers)

    def resume_interrupted(self) -> None:
        """Items a stop or crash left querying/moving are queued again; the interrupted try costs no attempt."""
        with self.store.transaction() as db:
            for table in ("request_queries", "request_studies"):
                db.execute(f"UPDATE {table} SET state=? WHERE state IN (?, ?)", (QUEUED, *_ACTIVE))  # noqa: S608 - fixed names

    def stop(self) -> None:
        """Stop dispatching; running items pause at the next series boundary and are resumed on the next start."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._sched is not None:
            self._sched.shutdown(wait=True)
            self._sched = None
        with self._dispatch_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.changes.stop()

    def reload(self, config: Config) -> None:
        # Limits and windows are read from self.config at each use, so the new values apply at once;
        # work parked for a window is looked at again now, since the windows may have changed.
        self.config = config
        self._facts = _facts_for(config)
        with self.store.transaction() as db:
            for table in ("request_queries", "request_studies"):
                db.execute(f"UPDATE {table} SET next_attempt=? WHERE state=?", (time.time(), WAITING))  # noqa: S608
        self.kick()

    def _space_for_pulls(self) -> bool:
        return self.space_ok is None or self.space_ok()

    def kick(self) -> None:
        """Dispatch now instead of at the next interval (a request arrived, an item finished)."""
        if self._pool is not None and not self._stopping.is_set():
            self.dispatch()

    # ------------------------------------------------------------------ requests

    def submit(self, request: Request, file_name: str) -> int:
        """Record a validated request with its queries; returns its id. Work starts at not_before (or now)."""
        now = time.time()
        start = max(now, request.not_before.timestamp()) if request.not_before else now
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO requests(name, file_name, sha256, peer, outputs, series_filter, priority, not_before, state,"
                " created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (request.name, file_name, request.sha256, request.peer, json.dumps(list(request.outputs)),
                 json.dumps(request.series_filter.as_dict()), request.priority,
                 request.not_before.timestamp() if request.not_before else None, R_QUEUED, now, now),
            )
            rid = int(cur.lastrowid or 0)
            for i, query in enumerate(request.studies):
                db.execute("INSERT INTO request_queries(request_id, idx, query, next_attempt) VALUES (?,?,?,?)",
                           (rid, i, json.dumps(query.as_dict()), start))
        log.info("Request %s (id %d) queued: %d quer(ies) on peer %s, priority %d", request.name, rid,
                 len(request.studies), request.peer, request.priority)
        self._changed(rid)
        self.kick()
        return rid

    def cancel(self, rid: int, who: str) -> str:
        """Cancel a request: work not started fails at once; a running C-FIND or C-MOVE finishes the series it is
        on (a C-CANCEL would leave that series half here and half there), then stops. Returns the request's state
        (KeyError: no such request)."""
        cancel_request(self.store, rid, who)
        self._changed(rid)
        return self.refresh_request(rid)

    def _cancelled(self, rid: int) -> str | None:
        rows = self.store.query("SELECT reason FROM requests WHERE id=?", (rid,))
        reason = str(rows[0][0] or "") if rows else ""
        return reason if reason.startswith(CANCELLED) else None

    def _changed(self, rid: int) -> None:
        self.changes.mark(rid)

    def _report(self, rid: int) -> None:
        """Re-derive the request's state, then tell the status writer (on the request-status thread)."""
        self.refresh_request(rid)
        if self.on_change is not None:
            self.on_change(rid)

    # ------------------------------------------------------------------ dispatch

    def dispatch(self) -> None:
        """Start every due item the peers' limits and windows allow, highest priority first."""
        if not self._dispatch_lock.acquire(blocking=False):
            return
        self.last_dispatch = time.monotonic()
        try:
            self._dispatch()
        except Exception:
            log.exception("Dispatch failed")
        finally:
            self._dispatch_lock.release()

    def _dispatch(self) -> None:
        if self._stopping.is_set() or self._pool is None:
            return
        now = time.time()
        rows = self.store.query(
            "SELECT 'q', q.id, q.request_id, r.peer, NULL, q.state FROM request_queries q JOIN requests r ON r.id=q.request_id"
            " WHERE q.state IN (?, ?) AND q.next_attempt<=?"
            " UNION ALL SELECT 's', s.id, s.request_id, r.peer, s.study_uid, s.state FROM request_studies s"
            " JOIN requests r ON r.id=s.request_id WHERE s.state IN (?, ?) AND s.next_attempt<=?"
            " ORDER BY 1, 2",
            (QUEUED, WAITING, now, QUEUED, WAITING, now),
        )
        priority = {int(r[0]): int(r[1]) for r in self.store.query("SELECT id, priority FROM requests")}
        # Higher priority first, then older requests; queries before studies so a request's list fills early.
        rows.sort(key=lambda r: (-priority.get(int(r[2]), 0), int(r[2]), r[0], int(r[1])))
        for kind, item_id, rid, peer_name, study_uid, _state in rows:
            table = "request_queries" if kind == "q" else "request_studies"
            peer = self.config.peers.get(peer_name)
            if peer is None:
                self._finish_failed(table, int(item_id), int(rid), f"peer {peer_name!r} is no longer configured")
                continue
            if kind == "s" and not self._space_for_pulls():
                self._set_item(table, int(item_id), WAITING, next_attempt=now + _SPACE_RETRY_S, reason=_NO_SPACE)
                self._changed(int(rid))
                continue
            clock_now = self.clock()
            if not in_window(clock_now, peer.windows):
                opens = next_window_start(clock_now, peer.windows)
                at = opens.timestamp() - clock_now.timestamp() + now if opens else now + 3600
                when = opens.isoformat(timespec="seconds") if opens else "not within a week"
                self._set_item(table, int(item_id), WAITING, next_attempt=at,
                               reason=f"peer {peer_name} time window closed; opens {when}")
                self._changed(int(rid))
                continue
            with self._lock:
                key = (str(kind), int(item_id))
                if key in self._running or self._inflight.get(peer_name, 0) >= peer.max_associations:
                    continue
                if study_uid is not None and study_uid in self._running_studies:
                    continue  # another request is pulling the same study; it will be complete for this one too
                self._running.add(key)
                self._inflight[peer_name] = self._inflight.get(peer_name, 0) + 1
                if study_uid is not None:
                    self._running_studies.add(study_uid)
            self._pool.submit(self._work, str(kind), int(item_id), int(rid), peer_name, study_uid)

    def _work(self, kind: str, item_id: int, rid: int, peer_name: str, study_uid: str | None) -> None:
        table = "request_queries" if kind == "q" else "request_studies"
        try:
            peer = self.config.peers[peer_name]
            cancelled = self._cancelled(rid)
            if cancelled:  # found by a query that was running when the request was cancelled
                self._finish_failed(table, item_id, rid, cancelled)
            elif kind == "q":
                self._run_query(item_id, rid, peer)
            else:
                assert study_uid is not None
                self._run_study(item_id, rid, peer, study_uid)
        except _Paused as paused:
            if paused.state == FAILED:
                self._finish_failed(table, item_id, rid, paused.reason)
            else:
                self._set_item(table, item_id, paused.state, next_attempt=paused.at, reason=paused.reason)
        except ScuError as exc:
            if kind == "s" and not self._space_for_pulls():
                # Our own disk guard refused the peer's sub-operations: not the peer's fault, no attempt spent.
                self._set_item(table, item_id, WAITING, next_attempt=time.time() + _SPACE_RETRY_S, reason=_NO_SPACE)
            else:
                self._retry_or_fail(table, item_id, rid, exc.kind, exc.reason, _budget_for(exc))
        except Exception as exc:
            # A bug or an I/O error: retried within the attempt budget, like a transient failure.
            log.exception("Request %d: %s %d failed unexpectedly", rid, table, item_id)
            self._retry_or_fail(table, item_id, rid, ErrorKind.TRANSIENT, f"internal error: {exc}")
        finally:
            with self._lock:
                self._running.discard((kind, item_id))
                self._inflight[peer_name] = max(0, self._inflight.get(peer_name, 0) - 1)
                if study_uid is not None:
                    self._running_studies.discard(study_uid)
                self._lock.notify_all()
            self._changed(rid)
            self.kick()

    # ------------------------------------------------------------------ item state

    def _set_item(self, table: str, item_id: int, state: str, **columns: Any) -> None:
        allowed = {"next_attempt", "reason", "attempts", "expected", "received", "found"}
        assert set(columns) <= allowed, columns
        sets = "".join(f", {k}=?" for k in columns)
        extra = ", updated=?" if table == "request_studies" else ""
        values: list[Any] = [state, *columns.values()]
        if extra:
            values.append(time.time())
        with self.store.transaction() as db:
            db.execute(f"UPDATE {table} SET state=?{sets}{extra} WHERE id=?", (*values, item_id))  # noqa: S608 - fixed names

    def _finish_failed(self, table: str, item_id: int, rid: int, reason: str) -> None:
        self._set_item(table, item_id, FAILED, reason=reason)
        log.warning("Request %d: %s %d failed: %s", rid, table, item_id, reason)
        self._after_failure(table, item_id, rid, reason)
        self._changed(rid)

    def _after_failure(self, table: str, item_id: int, rid: int, reason: str) -> None:
        if table == "request_studies":
            release_failed_study(self.store, item_id, rid, reason)

    def _retry_or_fail(self, table: str, item_id: int, rid: int, kind: ErrorKind, reason: str,
                       budget_cap: int | None = None) -> None:
        """The one place that spends the attempt budget (scu does not retry; the inbox does not either)."""
        (attempts,) = self.store.query(f"SELECT attempts FROM {table} WHERE id=?", (item_id,))[0]  # noqa: S608
        attempts = int(attempts) + 1
        budget = self.config.requests.max_attempts
        if budget_cap is not None:
            budget = min(budget, budget_cap)
        if kind is ErrorKind.PERMANENT:
            self._set_item(table, item_id, FAILED, attempts=attempts, reason=reason)
            log.warning("Request %d: %s %d failed permanently: %s", rid, table, item_id, reason)
            self._after_failure(table, item_id, rid, reason)
        elif attempts >= budget:
            reason = f"gave up after {attempts} attempts: {reason}"
            self._set_item(table, item_id, FAILED, attempts=attempts, reason=reason)
            log.warning("Request %d: %s %d %s", rid, table, item_id, reason)
            self._after_failure(table, item_id, rid, reason)
        else:
            r = self.config.requests
            delay = backoff_delay(attempts, r.backoff_base_s, r.backoff_max_s, self.rng)
            at = time.time() + delay
            when = datetime.fromtimestamp(at, UTC).astimezone().isoformat(timespec="seconds")
            self._set_item(table, item_id, QUEUED, attempts=attempts, next_attempt=at,
                           reason=f"attempt {attempts} of {budget} failed: {reason}; retry at {when}")
            log.info("Request %d: %s %d attempt %d failed (%s); retry in %.1fs", rid, table, item_id, attempts, reason, delay)

    def _pause_point(self, peer: PeerConfig, rid: int) -> None:
        """Between series: stop here if the request was cancelled, the node is stopping or the peer's window closed."""
        cancelled = self._cancelled(rid)
        if cancelled:
            raise _Paused(FAILED, time.time(), f"{cancelled}; stopped between two series")
        if self._stopping.is_set():
            raise _Paused(QUEUED, time.time(), "interrupted by a node stop; resumes at start")
        now = self.clock()
        if not in_window(now, peer.windows):
            opens = next_window_start(now, peer.windows)
            at = time.time() + (opens.timestamp() - now.timestamp() if opens else 3600)
            raise _Paused(WAITING, at, f"peer {peer.name} time window closed; opens {opens.isoformat() if opens else '?'}")

    # ------------------------------------------------------------------ the pipeline

    def _run_query(self, qid: int, rid: int, peer: PeerConfig) -> None:
        (raw,) = self.store.query("SELECT query FROM request_queries WHERE id=?", (qid,))[0]
        query = StudyQuery(**json.loads(raw))
        self._set_item("request_queries", qid, QUERYING, reason=None)
        self._changed(rid)
        address, settings = address_of(peer), settings_for(self.config, peer)
        found = findsplit.find_all(lambda q: scu.find_studies(address, settings, q), query.dicom_query(),
                                   peer.max_find_results, self.clock().date())
        matches = [m for m in found.matches if m.get("StudyInstanceUID")]
        if not matches:
            raise ScuError(ErrorKind.PERMANENT, f"C-FIND found no study for {query.describe()} on {peer.name}")
        warning = None
        if found.queries > 1:
            log.info("Request %d: query %d reached the peer's cap on results; split by date into %d C-FINDs",
                     rid, qid, found.queries)
        if found.capped_days:
            days = ", ".join(found.capped_days[:10])
            warning = (f"may be incomplete: {peer.name} capped its answer for a single day ({days}); narrow the "
                       "query (modality) to see every study of that day")
            log.warning("Request %d: query %d %s", rid, qid, warning)
        now = time.time()
        with self.store.transaction() as db:
            for m in matches:
                db.execute(
                    "INSERT OR IGNORE INTO request_studies(request_id, query_id, study_uid, patient_id, accession,"
                    " study_date, next_attempt, updated) VALUES (?,?,?,?,?,?,?,?)",
                    (rid, qid, m["StudyInstanceUID"], m.get("PatientID"), m.get("AccessionNumber"), m.get("StudyDate"),
                     now, now),
                )
            db.execute("UPDATE request_queries SET state=?, found=?, reason=? WHERE id=?",
                       (FOUND, len(matches), warning, qid))
        log.info("Request %d: query %d matched %d stud(ies)", rid, qid, len(matches))
        log.debug("Request %d: query %d is %s", rid, qid, query.describe())

    def _series_filter(self, rid: int) -> SeriesFilter:
        (raw,) = self.store.query("SELECT series_filter FROM requests WHERE id=?", (rid,))[0]
        data = json.loads(raw)
        return SeriesFilter(tuple(data["modality"]), bool(data["exclude_derived"]), int(data["min_instances"]),
                            tuple(data["include"]), tuple(data["exclude"]))

    def _plan_series(self, rid: int, peer: PeerConfig, study_uid: str) -> None:
        """SERIES-level C-FIND once per study: expected counts, and which series the filter keeps."""
        address, settings = address_of(peer), settings_for(self.config, peer)
        series = scu.find_series(address, settings, study_uid)
        filt = self._series_filter(rid)
        rows = []
        for s in series:
            uid = s.get("SeriesInstanceUID")
            if not uid:
                continue
            expected = s.get("NumberOfSeriesRelatedInstances")
            if not isinstance(expected, int):
                # The PACS left the count out: an IMAGE-level C-FIND counts the instances instead.
                expected = scu.count_instances(address, settings, study_uid, uid)
            why = "the PACS holds no instance of it" if expected == 0 else filt.verdict(s, expected, self._facts)
            rows.append((rid, study_uid, uid, s.get("SeriesNumber"), s.get("Modality"), s.get("SeriesDescription"),
                         expected, "skipped" if why else "selected", why))
        kept = [r for r in rows if r[7] == "selected"]
        if not kept:
            reasons = "; ".join(f"series {r[3]} {r[5] or ''}: {r[8]}" for r in rows) or "the study has no series"
            raise ScuError(ErrorKind.PERMANENT, f"the series filter kept none of {len(rows)} series ({reasons})")
        with self.store.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO request_series(request_id, study_uid, series_uid, number, modality, description,"
                " expected, state, reason) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        log.info("Request %d: study %s has %d series, %d selected", rid, study_uid, len(rows), len(kept))

    def _have(self, series_uid: str) -> int:
        return int(self.store.query("SELECT COUNT(*) FROM instances WHERE series_uid=?", (series_uid,))[0][0])

    @contextmanager
    def _move_slot(self, peer: PeerConfig) -> Iterator[None]:
        with self._lock:
            while self._moves.get(peer.name, 0) >= self.config.peers.get(peer.name, peer).max_moves:
                if self._stopping.is_set():
                    raise _Paused(QUEUED, time.time(), "interrupted by a node stop; resumes at start")
                self._lock.wait(1.0)
            self._moves[peer.name] = self._moves.get(peer.name, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._moves[peer.name] -= 1
                self._lock.notify_all()

    def _run_study(self, sid: int, rid: int, peer: PeerConfig, study_uid: str) -> None:
        owner = f"request:{rid}"
        if not self.store.query("SELECT 1 FROM request_series WHERE request_id=? AND study_uid=? LIMIT 1", (rid, study_uid)):
            self._set_item("request_studies", sid, QUERYING, reason=None)
            self._changed(rid)
            self._plan_series(rid, peer, study_uid)
        study_state.claim_pull(self.store, study_uid, owner)
        selected = self.store.query(
            "SELECT series_uid, expected, number FROM request_series WHERE request_id=? AND study_uid=? AND state!='skipped'"
            " ORDER BY number, series_uid", (rid, study_uid))
        total = sum(int(e) for _, e, _ in selected)
        counts = {uid: min(self._have(uid), int(e)) for uid, e, _ in selected}
        self._set_item("request_studies", sid, MOVING, expected=total, received=sum(counts.values()), reason=None)
        self._changed(rid)
        for series_uid, expected, number in selected:
            if counts[series_uid] >= int(expected):
                self._set_series(rid, series_uid, COMPLETE)
                continue
            self._pause_point(peer, rid)
            self._move_series(sid, rid, peer, study_uid, series_uid, int(expected), counts, total)
            counts[series_uid] = min(self._have(series_uid), int(expected))
            short = counts[series_uid] < int(expected)
            self._set_series(rid, series_uid, "short" if short else COMPLETE,
                             f"{counts[series_uid]}/{expected} instances after the move" if short else None)
            self._set_item("request_studies", sid, MOVING, received=sum(counts.values()))
            self._changed(rid)
            log.info("Request %d: series %s (%s) of study %s: %d/%d instances", rid, number, series_uid, study_uid,
                     counts[series_uid], expected)
        missing = [(uid, counts[uid], int(e)) for uid, e, _ in selected if counts[uid] < int(e)]
        if missing:
            detail = ", ".join(f"{uid} {have}/{exp}" for uid, have, exp in missing[:5])
            # Transient on purpose: the next attempt re-requests only what is missing (gap-fill).
            raise ScuError(ErrorKind.TRANSIENT, f"verification: {len(missing)} series short after the move ({detail})")
        reason = f"pulled by request {rid}: all {total} instances of {len(selected)} series present"
        version = completion.mark_complete(self.store, study_uid, reason)
        if version is None:
            log.info("Study %s already %s; nothing more to pull", study_uid, study_state.state_of(self.store, study_uid))
        study_state.release_pull(self.store, study_uid, owner)
        self._set_item("request_studies", sid, COMPLETE, received=total, reason=None)
        log.info("Request %d: study %s complete (%d instances)", rid, study_uid, total)

    def _set_series(self, rid: int, series_uid: str, state: str, reason: str | None = None) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE request_series SET state=?, reason=? WHERE request_id=? AND series_uid=?",
                       (state, reason, rid, series_uid))

    def _move_series(self, sid: int, rid: int, peer: PeerConfig, study_uid: str, series_uid: str, expected: int,
                     counts: dict[str, int], total: int) -> None:
        """Retrieve one series; when part of it is already here, only the missing instances (IMAGE level)."""
        address, settings = address_of(peer), settings_for(self.config, peer)
        sop_lists: list[list[str] | None] = [None]
        if counts[series_uid] > 0:
            remote = scu.find_instances(address, settings, study_uid, series_uid)
            local = {r[0] for r in self.store.query("SELECT sop_uid FROM instances WHERE series_uid=?", (series_uid,))}
            missing = [u for u in remote if u not in local]
            if not missing:
                return
            sop_lists = [missing[i:i + _IMAGE_MOVE_CHUNK] for i in range(0, len(missing), _IMAGE_MOVE_CHUNK)]
            log.info("Request %d: gap-fill of series %s: %d of %d instances missing", rid, series_uid, len(missing),
                     len(remote))
        base = sum(counts.values())

        def progress(p: MoveProgress) -> None:
            now = time.monotonic()
            if now - self._last_progress.get(sid, 0.0) >= 1.0:
                self._last_progress[sid] = now
                self._set_item("request_studies", sid, MOVING, received=min(total, base + p.completed))
                self._changed(rid)

        for sops in sop_lists:
            with self._move_slot(peer):
                with self.store.transaction() as db:
                    db.execute("UPDATE request_series SET moves=moves+1 WHERE request_id=? AND series_uid=?", (rid, series_uid))
                outcome = "failure"
                try:
                    if peer.retrieve == "get":
                        scu.get(address, settings, study_uid, self._store_callback(peer), series_uid=series_uid,
                                on_progress=progress, sop_instance_uids=sops)
                    else:
                        scu.move(address, settings, self.config.node.ae_title, study_uid, series_uid=series_uid,
                                 on_progress=progress, sop_instance_uids=sops)
                    outcome = "success"
                finally:
                    if self.metrics is not None:
                        self.metrics.inc("dicomnode_moves_total", outcome=outcome)

    def health(self, stall_after_s: float) -> tuple[bool, str]:
        """The dispatcher runs every dispatch_interval_s and the request-status thread is alive; retries are
        reported (a peer that keeps failing is in the detail, and in `daemon.py status`)."""
        if self._sched is None:
            return False, "request scheduler not running"
        last = self.last_dispatch
        silent = time.monotonic() - last if last is not None else 0.0
        if silent > max(stall_after_s, 10 * self.dispatch_interval_s):
            return False, f"request dispatcher silent for {silent:.0f} s"
        ok, status_detail = self.changes.health(stall_after_s)
        if not ok:
            return False, status_detail
        retrying = self.store.query(
            "SELECT (SELECT COUNT(*) FROM request_queries WHERE attempts>0 AND state IN (?, ?))"
            " + (SELECT COUNT(*) FROM request_studies WHERE attempts>0 AND state IN (?, ?))",
            (QUEUED, WAITING, QUEUED, WAITING))[0][0]
        detail = f"dispatching (last {silent:.0f} s ago)"
        if retrying:
            detail += f"; {retrying} item(s) waiting to retry after a failure (see `daemon.py status`)"
        return True, detail

    def counts_by_state(self) -> dict[str, int]:
        """Requests per state (the queue depth gauge)."""
        return request_counts(self.store)

    def _store_callback(self, peer: PeerConfig) -> Callable[[Any], int | None]:
        """C-GET: each received dataset goes through the same durable ingest as a C-STORE to the SCP."""
        origin = Origin(calling_ae=peer.ae_title, peer_ip=peer.host, assoc_id="")

        def on_store(ds: Any) -> int | None:
            tmp = self.store.new_temp_path()
            ds.save_as(tmp, enforce_file_format=True)
            try:
                self.store.ingest(tmp, origin)
            except StoreError as exc:
                return exc.status
            return None

        return on_store

    # ------------------------------------------------------------------ request state

    def refresh_request(self, rid: int) -> str:
        """Derive the request state from its items and, once pulled, from studies.state (the processor's)."""
        rows = self.store.query("SELECT state, reason FROM requests WHERE id=?", (rid,))
        if not rows:
            return ""
        current = str(rows[0][0])
        if current in (R_DONE, R_FAILED):
            return current
        cancelled = str(rows[0][1] or "") if str(rows[0][1] or "").startswith(CANCELLED) else None
        q_states = [str(r[0]) for r in self.store.query("SELECT state FROM request_queries WHERE request_id=?", (rid,))]
        s_rows = self.store.query(
            "SELECT rs.state, st.state FROM request_studies rs LEFT JOIN studies st ON st.study_uid=rs.study_uid"
            " WHERE rs.request_id=?", (rid,))
        items = q_states + [str(r[0]) for r in s_rows]
        reason = None
        if any(s not in (FOUND, COMPLETE, FAILED) for s in items):
            started = any(s not in (QUEUED, WAITING) for s in items) or any(s == FOUND for s in q_states)
            state = R_RUNNING if started else R_QUEUED
        elif any(rs == COMPLETE and st not in ("done", "failed", "discarded") for rs, st in s_rows):
            # Every pull is over; wait for processing of the studies that arrived before deciding.
            state = R_PULLED
            if FAILED in items:
                reason = self._failure_summary(rid)
        elif FAILED in items or any(st in ("failed", "discarded") for _, st in s_rows):
            state, reason = R_FAILED, self._failure_summary(rid)
        else:
            state = R_DONE
        if cancelled:
            # Cancelled: running until the series being moved is in, then failed with the user's words.
            running = any(s in _ACTIVE for s in items)
            state = R_RUNNING if running else R_FAILED
            reason = cancelled + ("; the series being moved finishes first" if running else "")
        if state != current or reason:
            with self.store.transaction() as db:
                db.execute("UPDATE requests SET state=?, reason=?, updated=? WHERE id=?", (state, reason, time.time(), rid))
            if state != current:
                log.info("Request %d: %s -> %s", rid, current, state)
                if state in (R_DONE, R_FAILED):
                    failpoints.hit(failpoints.REQUEST_STATE_FINAL)
        return state

    def _failure_summary(self, rid: int) -> str:
        reasons = [f"query {json.loads(q)}: {r}" for q, r in self.store.query(
            "SELECT query, reason FROM request_queries WHERE request_id=? AND state=?", (rid, FAILED))]
        reasons += [f"study {u}: {r}" for u, r in self.store.query(
            "SELECT study_uid, reason FROM request_studies WHERE request_id=? AND state=?", (rid, FAILED))]
        reasons += [f"study {u} ({st}): {r}" for u, st, r in self.store.query(
            "SELECT st.study_uid, st.state, st.reason FROM request_studies rs JOIN studies st ON st.study_uid=rs.study_uid"
            " WHERE rs.request_id=? AND st.state IN ('failed', 'discarded')", (rid,))]
        return "; ".join(reasons) or "failed"



def release_failed_study(store: Store, item_id: int, rid: int, reason: str) -> None:
    """A study whose pull failed is released; what did arrive is processed, flagged as possibly incomplete."""
    (study_uid,) = store.query("SELECT study_uid FROM request_studies WHERE id=?", (item_id,))[0]
    study_state.release_pull(store, study_uid, f"request:{rid}")
    if store.query("SELECT 1 FROM pulls WHERE study_uid=?", (study_uid,)):
        return  # another request still pulls it and will complete it
    completion.mark_complete(store, study_uid, f"pull failed ({reason}); processing what arrived", may_be_incomplete=True)


def cancel_request(store: Store, rid: int, who: str) -> bool:
    """Record a cancellation in the database (the running node, or `daemon.py cancel` beside it): the reason says
    who, items not started fail now, running ones stop at their next series. False: already finished/cancelled."""
    rows = store.query("SELECT state, reason FROM requests WHERE id=?", (rid,))
    if not rows:
        raise KeyError(rid)
    state, reason = str(rows[0][0]), rows[0][1]
    if state in (R_DONE, R_FAILED) or str(reason or "").startswith(CANCELLED):
        return False
    when = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    why = f"{CANCELLED}{who} at {when}"
    with store.transaction() as db:
        db.execute("UPDATE requests SET reason=?, updated=? WHERE id=?", (why, time.time(), rid))
        db.execute("UPDATE request_queries SET state=?, reason=? WHERE request_id=? AND state IN (?, ?)",
                   (FAILED, why, rid, QUEUED, WAITING))
        waiting = [int(r[0]) for r in db.execute(
            "SELECT id FROM request_studies WHERE request_id=? AND state IN (?, ?)", (rid, QUEUED, WAITING))]
        db.executemany("UPDATE request_studies SET state=?, reason=?, updated=? WHERE id=?",
                       [(FAILED, why, time.time(), sid) for sid in waiting])
    for sid in waiting:
        release_failed_study(store, sid, rid, why)
    log.info("Request %d cancelled by %s (%d waiting stud(ies) dropped)", rid, who, len(waiting))
    return True


# A 0xCxxx move failure before any sub-operation is nearly always configuration (the PACS does not know our AE
# as a destination; Orthanc says 0xC000, not 0xA801): retried, but only this often, so the user hears soon.
UNKNOWN_DESTINATION_ATTEMPTS = 3


def _budget_for(exc: ScuError) -> int | None:
    r = exc.result
    if exc.status is not None and exc.status >> 12 == 0xC and r is not None and r.completed + r.failed + r.warning == 0:
        return UNKNOWN_DESTINATION_ATTEMPTS
    return None


def peer_find(config: Config, peer_name: str, query: dict[str, str]) -> list[dict[str, Any]]:
    """STUDY-level C-FIND on a configured peer (the CLI's `find`), split by date when the peer caps answers."""
    peer = config.peers[peer_name]
    address, settings = address_of(peer), settings_for(config, peer)
    found = findsplit.find_all(lambda q: scu.find_studies(address, settings, q), query, peer.max_find_results,
                               _local_now().date())
    if found.capped_days:
        log.warning("%s capped its answer for a single day (%s): some studies of that day may be missing",
                    peer_name, ", ".join(found.capped_days[:10]))
    return found.matches


__all__ = ["Scheduler", "backoff_delay", "cancel_request", "in_window", "next_window_start", "peer_find"]
