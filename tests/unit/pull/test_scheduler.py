"""Scheduler logic without a network: windows, backoff, the attempt budget, priorities, resume, the per-study pipeline."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node.config import TimeWindow
from node.ops.metrics import Metrics
from node.pull import scheduler as sched_mod
from node.pull.requests import Request, SeriesFilter, StudyQuery
from node.pull.scheduler import Scheduler, backoff_delay, in_window, next_window_start
from node.pull.scu import ErrorKind, MoveResult, ScuError
from node.store.store import Origin, Store
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.nodeproc import make_config

WEEKNIGHTS = (TimeWindow("20:00", "06:00", ("mon", "tue", "wed", "thu", "fri")),)
FRIDAY = datetime(2026, 11, 27).astimezone().tzinfo  # any zone: the functions read wall-clock time


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A time in the week of Monday 2026-11-23 (day 0 = Monday)."""
    return datetime(2026, 11, 23 + day, hour, minute, tzinfo=FRIDAY)


def test_an_overnight_window_is_open_from_its_start_day_into_the_next_morning() -> None:
    assert in_window(at(4, 23), WEEKNIGHTS)  # Friday night
    assert in_window(at(5, 2), WEEKNIGHTS)  # Saturday early: the Friday window still runs
    assert not in_window(at(5, 6), WEEKNIGHTS)  # the end is exclusive
    assert not in_window(at(5, 23), WEEKNIGHTS)  # no window starts on Saturday
    assert not in_window(at(0, 12), WEEKNIGHTS)


def test_the_next_window_start_skips_days_without_a_window() -> None:
    assert next_window_start(at(5, 10), WEEKNIGHTS) == at(7, 20)  # Saturday morning -> Monday 20:00
    assert next_window_start(at(1, 19, 59), WEEKNIGHTS) == at(1, 20)
    assert next_window_start(at(1, 21), WEEKNIGHTS) == at(1, 21)  # open: now


def test_no_windows_means_always_open_and_equal_times_mean_all_day() -> None:
    assert in_window(at(6, 3), ())
    assert next_window_start(at(6, 3), ()) == at(6, 3)
    assert in_window(at(2, 5), (TimeWindow("07:00", "07:00"),))


def test_backoff_doubles_up_to_the_cap_with_jitter_of_half_either_way() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        nominal = min(60.0, 2.0 * 2 ** (attempt - 1))
        for _ in range(50):
            assert 0.5 * nominal <= backoff_delay(attempt, 2.0, 60.0, rng) <= 1.5 * nominal


class FakeJobs:
    """Stands in for the work pool: records the work the dispatcher starts instead of running it."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, ...]] = []

    def submit(self, func: Any, *args: Any) -> None:
        self.jobs.append(args)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Scheduler, Store]]:
    config = make_config(tmp_path, requests={"max_attempts": 3, "backoff_base_s": 10, "backoff_max_s": 100},
                         peers={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "max_associations": 1}})
    store = Store(config.paths)
    scheduler = Scheduler(config, store)
    try:
        yield scheduler, store
    finally:
        store.close()


def request(name: str = "r", *queries: StudyQuery, priority: int = 0, **kw: Any) -> Request:
    return Request(name=name, sha256=name * 4, peer="pacs", studies=queries or (StudyQuery(accession="A1"),),
                   priority=priority, **kw)


def query_row(store: Store, rid: int) -> tuple[Any, ...]:
    return store.query("SELECT id, state, attempts, next_attempt, reason FROM request_queries WHERE request_id=?", (rid,))[0]


def test_a_transient_failure_is_retried_with_backoff_until_the_budget_is_spent(
    env: tuple[Scheduler, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler, store = env
    calls = []

    def failing_find(*args: Any) -> list[dict[str, Any]]:
        calls.append(args)
        raise ScuError(ErrorKind.TRANSIENT, "cannot connect")

    monkeypatch.setattr(sched_mod.scu, "find_studies", failing_find)
    rid = scheduler.submit(request(), "r.yaml")
    qid = query_row(store, rid)[0]
    before = time.time()
    scheduler._work("q", qid, rid, "pacs", None)
    _, state, attempts, next_attempt, reason = query_row(store, rid)
    assert (state, attempts) == ("queued", 1)
    assert before + 5 <= next_attempt <= time.time() + 15  # base 10 s, jitter 0.5-1.5
    assert reason.startswith("attempt 1 of 3 failed: cannot connect; retry at ")
    scheduler._work("q", qid, rid, "pacs", None)
    scheduler._work("q", qid, rid, "pacs", None)
    _, state, attempts, _, reason = query_row(store, rid)
    assert (state, attempts, len(calls)) == ("failed", 3, 3)
    assert reason == "gave up after 3 attempts: cannot connect"
    assert scheduler.refresh_request(rid) == "failed"


def test_a_permanent_failure_fails_at_once_without_a_retry(
    env: tuple[Scheduler, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler, store = env
    calls = []

    def rejected(*args: Any) -> list[dict[str, Any]]:
        calls.append(args)
        raise ScuError(ErrorKind.PERMANENT, "association rejected (permanent): calling AE title not recognised")

    monkeypatch.setattr(sched_mod.scu, "find_studies", rejected)
    rid = scheduler.submit(request(), "r.yaml")
    scheduler._work("q", query_row(store, rid)[0], rid, "pacs", None)
    _, state, attempts, _, reason = query_row(store, rid)
    assert (state, attempts, len(calls)) == ("failed", 1, 1)
    assert "calling AE title not recognised" in reason
    scheduler._pool = FakeJobs()  # type: ignore[assignment]
    scheduler._dispatch()
    assert scheduler._pool.jobs == []  # type: ignore[union-attr]


def test_a_find_without_matches_is_a_permanent_failure(env: tuple[Scheduler, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler, store = env
    monkeypatch.setattr(sched_mod.scu, "find_studies", lambda *a: [])
    rid = scheduler.submit(request("r", StudyQuery(patient_id="P", study_date="20250101-20250131")), "r.yaml")
    scheduler._work("q", query_row(store, rid)[0], rid, "pacs", None)
    _, state, attempts, _, reason = query_row(store, rid)
    assert (state, attempts) == ("failed", 1)
    assert reason == "C-FIND found no study for patient_id P, study_date 20250101-20250131 on pacs"


def test_the_dispatcher_starts_higher_priority_work_first_within_the_peer_limit(env: tuple[Scheduler, Store]) -> None:
    scheduler, store = env
    low = scheduler.submit(request("low"), "low.yaml")
    high = scheduler.submit(request("high", priority=5), "high.yaml")
    jobs = FakeJobs()
    scheduler._pool = jobs  # type: ignore[assignment]
    scheduler._dispatch()
    assert [j[2] for j in jobs.jobs] == [high]  # max_associations 1: one item at a time
    scheduler._dispatch()
    assert len(jobs.jobs) == 1  # still busy
    scheduler._running.clear()
    scheduler._inflight.clear()
    with store.transaction() as db:
        db.execute("UPDATE request_queries SET state='found' WHERE request_id=?", (high,))
    scheduler._dispatch()
    assert [j[2] for j in jobs.jobs] == [high, low]


def test_not_before_holds_the_request_back(env: tuple[Scheduler, Store]) -> None:
    scheduler, store = env
    later = datetime.now().astimezone() + timedelta(hours=2)
    rid = scheduler.submit(request("later", not_before=later), "later.yaml")
    jobs = FakeJobs()
    scheduler._pool = jobs  # type: ignore[assignment]
    scheduler._dispatch()
    assert jobs.jobs == []
    assert query_row(store, rid)[3] == pytest.approx(later.timestamp())


def test_a_closed_window_parks_the_work_until_the_window_opens(env: tuple[Scheduler, Store], tmp_path: Path) -> None:
    scheduler, store = env
    config = make_config(tmp_path, peers={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                                                   "windows": [{"start": "20:00", "end": "06:00"}]}})
    scheduler.reload(config)
    noon = datetime.now().astimezone().replace(hour=12, minute=0, second=0, microsecond=0)
    scheduler.clock = lambda: noon
    rid = scheduler.submit(request(), "r.yaml")
    jobs = FakeJobs()
    scheduler._pool = jobs  # type: ignore[assignment]
    scheduler._dispatch()
    _, state, attempts, next_attempt, reason = query_row(store, rid)
    assert jobs.jobs == []
    assert (state, attempts) == ("waiting", 0)
    assert next_attempt - time.time() == pytest.approx(8 * 3600, abs=5)
    assert "time window closed; opens " in reason
    scheduler.clock = lambda: noon.replace(hour=20, minute=1)
    with store.transaction() as db:
        db.execute("UPDATE request_queries SET next_attempt=0")
    scheduler._dispatch()
    assert len(jobs.jobs) == 1


def test_work_interrupted_by_a_crash_is_queued_again_at_start(env: tuple[Scheduler, Store]) -> None:
    scheduler, store = env
    rid = scheduler.submit(request(), "r.yaml")
    with store.transaction() as db:
        db.execute("UPDATE request_queries SET state='querying', attempts=1 WHERE request_id=?", (rid,))
    scheduler.resume_interrupted()
    _, state, attempts, _, _ = query_row(store, rid)
    assert (state, attempts) == ("queued", 1)  # the interrupted try costs no attempt


def test_start_and_stop_return_while_work_is_being_dispatched(env: tuple[Scheduler, Store]) -> None:
    scheduler, _store = env
    for i in range(5):
        scheduler.submit(request(f"r{i}"), f"r{i}.yaml")
    scheduler.start()
    scheduler.stop()  # a finishing item dispatches the next one: this must not deadlock the shutdown
    assert scheduler._pool is None


class FakePacs:
    """The scu functions the pipeline calls, over generated files that a 'move' ingests into the store."""

    def __init__(self, store: Store, spec: StudySpec, files: list[Path], tmp: Path, deliver: float = 1.0) -> None:
        self.store, self.spec, self.files, self.tmp, self.deliver = store, spec, files, tmp, deliver
        self.moves: list[tuple[str | None, int | None]] = []

    def find_studies(self, *a: Any) -> list[dict[str, Any]]:
        return [{"StudyInstanceUID": self.spec.study_uid, "AccessionNumber": self.spec.accession, "PatientID": "P"}]

    def find_series(self, *a: Any) -> list[dict[str, Any]]:
        return [{"SeriesInstanceUID": s.series_uid, "Modality": s.modality, "SeriesNumber": s.series_number,
                 "SeriesDescription": s.series_description, "NumberOfSeriesRelatedInstances": s.n_slices,
                 "ImageType": s.extra.get("ImageType", [])} for s in self.spec.series]

    def move(self, peer: Any, settings: Any, dest: str, study_uid: str, series_uid: str | None = None,
             on_progress: Any = None, sop_instance_uids: list[str] | None = None) -> MoveResult:
        self.moves.append((series_uid, len(sop_instance_uids) if sop_instance_uids else None))
        from pydicom import dcmread

        chosen = [f for f in self.files if str(dcmread(f, stop_before_pixels=True).SeriesInstanceUID) == series_uid]
        if sop_instance_uids:
            chosen = [f for f in chosen if f.stem in sop_instance_uids]
        else:
            chosen = chosen[: max(1, int(len(chosen) * self.deliver))]
        for f in chosen:
            tmp = self.store.new_temp_path()
            shutil.copy(f, tmp)
            self.store.ingest(tmp, Origin(calling_ae="PACS"))
        return MoveResult(0, len(chosen), 0, 0, 0)

    def find_instances(self, peer: Any, settings: Any, study_uid: str, series_uid: str) -> list[str]:
        from pydicom import dcmread

        return [f.stem for f in self.files if str(dcmread(f, stop_before_pixels=True).SeriesInstanceUID) == series_uid]


@pytest.fixture
def pacs(env: tuple[Scheduler, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePacs:
    _, store = env
    spec = StudySpec(accession="ACC1", series=[
        SeriesSpec(n_slices=4, series_number=1), SeriesSpec(n_slices=3, series_number=2, modality="CT"),
        SeriesSpec(n_slices=2, series_number=3, modality="CT", series_description="MIP",
                   extra={"ImageType": ["DERIVED", "SECONDARY", "MIP"]})])
    fake = FakePacs(store, spec, write_study(spec, tmp_path / "files"), tmp_path)
    for name in ("find_studies", "find_series", "move", "find_instances"):
        monkeypatch.setattr(sched_mod.scu, name, getattr(fake, name))
    return fake


def run_all(scheduler: Scheduler, store: Store, rid: int) -> None:
    for (qid,) in store.query("SELECT id FROM request_queries WHERE request_id=?", (rid,)):
        scheduler._work("q", int(qid), rid, "pacs", None)
    for sid, uid in store.query("SELECT id, study_uid FROM request_studies WHERE request_id=?", (rid,)):
        scheduler._work("s", int(sid), rid, "pacs", str(uid))


def test_the_pipeline_filters_series_moves_verifies_and_marks_the_study_complete_at_once(
    env: tuple[Scheduler, Store], pacs: FakePacs
) -> None:
    scheduler, store = env
    rid = scheduler.submit(request("r", StudyQuery(accession="ACC1"), series_filter=SeriesFilter(exclude_derived=True)),
                           "r.yaml")
    run_all(scheduler, store, rid)
    (state, expected, received), = store.query("SELECT state, expected, received FROM request_studies")
    assert (state, expected, received) == ("complete", 7, 7)
    assert store.study(pacs.spec.study_uid)["state"] == "complete"  # type: ignore[index]
    assert (store.paths.var / "ready" / f"{pacs.spec.study_uid}.json").exists()
    assert [m[1] for m in pacs.moves] == [None, None]  # two series, the MIP skipped
    assert store.query("SELECT COUNT(*) FROM pulls")[0][0] == 0  # the pull claim is released
    assert scheduler.refresh_request(rid) == "pulled"


def test_a_short_series_is_gap_filled_with_only_its_missing_instances(
    env: tuple[Scheduler, Store], pacs: FakePacs
) -> None:
    scheduler, store = env
    pacs.deliver = 0.5
    rid = scheduler.submit(request("r", StudyQuery(accession="ACC1"), series_filter=SeriesFilter(modality=("MR",))), "r.yaml")
    run_all(scheduler, store, rid)
    (state, attempts, reason), = store.query("SELECT state, attempts, reason FROM request_studies")
    assert (state, attempts) == ("queued", 1)
    assert "verification: 1 series short after the move" in reason
    run_all(scheduler, store, rid)
    (state, received), = store.query("SELECT state, received FROM request_studies")
    assert (state, received) == ("complete", 4)
    assert pacs.moves == [(pacs.spec.series[0].series_uid, None), (pacs.spec.series[0].series_uid, 2)]


def test_a_study_already_in_the_store_is_not_moved_again(env: tuple[Scheduler, Store], pacs: FakePacs) -> None:
    scheduler, store = env
    first = scheduler.submit(request("a", StudyQuery(accession="ACC1")), "a.yaml")
    run_all(scheduler, store, first)
    moved = len(pacs.moves)
    second = scheduler.submit(request("b", StudyQuery(accession="ACC1")), "b.yaml")
    run_all(scheduler, store, second)
    assert len(pacs.moves) == moved
    assert store.query("SELECT state FROM request_studies WHERE request_id=?", (second,)) == [("complete",)]


def test_a_filter_that_keeps_nothing_fails_the_study_with_each_series_reason(
    env: tuple[Scheduler, Store], pacs: FakePacs
) -> None:
    scheduler, store = env
    rid = scheduler.submit(request("r", StudyQuery(accession="ACC1"), series_filter=SeriesFilter(modality=("PT",))), "r.yaml")
    run_all(scheduler, store, rid)
    (state, attempts, reason), = store.query("SELECT state, attempts, reason FROM request_studies")
    assert (state, attempts) == ("failed", 1)
    assert reason.startswith("the series filter kept none of 3 series (series 1 t1_tse_tra: modality MR not in ['PT']")
    assert pacs.moves == []


def test_a_window_that_closes_mid_study_pauses_between_series_and_resumes_where_it_stopped(
    env: tuple[Scheduler, Store], pacs: FakePacs, tmp_path: Path
) -> None:
    scheduler, store = env
    scheduler.reload(make_config(tmp_path, peers={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                                                           "windows": [{"start": "20:00", "end": "06:00"}]}}))
    night = datetime.now().astimezone().replace(hour=23, minute=0, second=0, microsecond=0)
    morning = night.replace(hour=6, minute=0)
    scheduler.clock = lambda: night if len(pacs.moves) < 1 else morning  # closes after the first series moved
    rid = scheduler.submit(request("r", StudyQuery(accession="ACC1"), series_filter=SeriesFilter(exclude_derived=True)),
                           "r.yaml")
    run_all(scheduler, store, rid)
    (state, attempts, received, reason), = store.query("SELECT state, attempts, received, reason FROM request_studies")
    assert (state, attempts, received) == ("waiting", 0, 4)
    assert "time window closed" in reason
    scheduler.clock = lambda: night
    run_all(scheduler, store, rid)
    (state, received), = store.query("SELECT state, received FROM request_studies")
    assert (state, received) == ("complete", 7)
    assert [m[0] for m in pacs.moves] == [pacs.spec.series[0].series_uid, pacs.spec.series[1].series_uid]


def test_a_move_refused_before_any_sub_operation_gives_up_after_three_attempts(
    env: tuple[Scheduler, Store], pacs: FakePacs, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler, store = env
    scheduler.config = make_config(store.paths.var.parent, requests={"max_attempts": 8, "backoff_base_s": 10})

    def refused(*a: Any, **kw: Any) -> MoveResult:
        raise ScuError(ErrorKind.TRANSIENT, "C-MOVE SERIES failed: 0xC000; no sub-operation started", status=0xC000,
                       result=MoveResult(0xC000, 0, 0, 0, 0))

    monkeypatch.setattr(sched_mod.scu, "move", refused)
    rid = scheduler.submit(request("r", StudyQuery(accession="ACC1")), "r.yaml")
    for _ in range(3):
        run_all(scheduler, store, rid)
    (state, attempts, reason), = store.query("SELECT state, attempts, reason FROM request_studies")
    assert (state, attempts) == ("failed", 3)
    assert reason.startswith("gave up after 3 attempts: C-MOVE SERIES failed: 0xC000; no sub-operation started")


def test_finished_moves_and_request_states_reach_the_metrics(env: tuple[Scheduler, Store], pacs: FakePacs) -> None:
    scheduler, store = env
    scheduler.metrics = Metrics()
    rid = scheduler.submit(request("r", StudyQuery(accession="ACC1"), series_filter=SeriesFilter(exclude_derived=True)),
                           "r.yaml")
    run_all(scheduler, store, rid)
    text = scheduler.metrics.render()
    assert 'dicomnode_moves_total{outcome="success"} 2.0' in text
    assert scheduler.counts_by_state() == {"pulled": 1}


def test_pulls_wait_without_spending_attempts_while_the_nodes_own_disk_is_full(
    env: tuple[Scheduler, Store], pacs: FakePacs, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler, store = env
    space = {"ok": True}
    scheduler.space_ok = lambda: space["ok"]
    rid = scheduler.submit(request("r", StudyQuery(accession="ACC1")), "r.yaml")
    (qid,) = store.query("SELECT id FROM request_queries WHERE request_id=?", (rid,))[0]
    scheduler._work("q", int(qid), rid, "pacs", None)
    space["ok"] = False
    jobs = FakeJobs()
    scheduler._pool = jobs  # type: ignore[assignment]
    scheduler._dispatch()
    assert jobs.jobs == []  # no move is started while the node would refuse what it pulls
    state, attempts, reason = store.query("SELECT state, attempts, reason FROM request_studies")[0]
    assert (state, attempts) == ("waiting", 0)
    assert reason.startswith("waiting for disk space")

    # A move that fails because our disk guard refused its sub-operations spends no attempt either.
    def refused(*a: Any, **k: Any) -> MoveResult:
        raise ScuError(ErrorKind.TRANSIENT, "C-MOVE SERIES failed: 0xC000 unable to process")

    monkeypatch.setattr(sched_mod.scu, "move", refused)
    (sid, uid), = store.query("SELECT id, study_uid FROM request_studies")
    scheduler._work("s", int(sid), rid, "pacs", str(uid))
    assert store.query("SELECT state, attempts FROM request_studies") == [("waiting", 0)]
    space["ok"] = True
    monkeypatch.setattr(sched_mod.scu, "move", pacs.move)
    scheduler._work("s", int(sid), rid, "pacs", str(uid))
    assert store.query("SELECT state, attempts FROM request_studies") == [("complete", 0)]
