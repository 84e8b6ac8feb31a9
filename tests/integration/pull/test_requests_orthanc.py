"""Inbox requests end to end against a real Orthanc: accession, patient + date range, series filter, CSV, faults."""

from __future__ import annotations

import io
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

import daemon
from node.app import Node
from tests.support.requests import FAST, drop, expected_counts, series_counts, status, wait_state
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, make_study, multi_series_study, write_datasets
from toolkit.nodeproc import NodeProcess, config_dict, make_config
from toolkit.peers import OrthancPeer, PostgresPeer, free_port

pytestmark = pytest.mark.integration

NODE_AE = "DICOMNODE"


@dataclass
class Pacs:
    orthanc: OrthancPeer
    node_port: int
    studies: dict[str, StudySpec]
    files: dict[str, list[Path]]

    def peer(self, **extra: Any) -> dict[str, Any]:
        return {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": self.orthanc.dicom_port, "timeout_s": 10,
                         "dimse_timeout_s": 30, **extra}}


def _studies() -> dict[str, StudySpec]:
    derived = SeriesSpec(modality="CT", n_slices=3, series_number=90, series_description="coronal",
                         extra={"ImageType": ["DERIVED", "SECONDARY", "MPR"]})
    return {
        "acc": multi_series_study(n_series=3, n_slices=4, patient_id="PATREQ1", accession="REQ_A", study_date="20250110"),
        "pat_in": StudySpec(patient_id="PATREQ2", accession="REQ_B", study_date="20250301",
                            series=[SeriesSpec(modality="CT", n_slices=5, series_description="chest"), derived]),
        "pat_out": StudySpec(patient_id="PATREQ2", accession="REQ_C", study_date="20240101",
                             series=[SeriesSpec(modality="CT", n_slices=2, series_description="old chest")]),
        "csv1": StudySpec(patient_id="PATREQ3", accession="REQ_D", series=[SeriesSpec(n_slices=3)]),
        "csv2": StudySpec(patient_id="PATREQ3", accession="REQ_E", series=[SeriesSpec(n_slices=2, modality="CT")]),
        "big": StudySpec(patient_id="PATREQ4", accession="REQ_BIG", series=[
            SeriesSpec(n_slices=400, rows=16, cols=16, series_description="long", series_number=1),
            SeriesSpec(n_slices=3, series_description="short", series_number=2)]),
        "many": multi_series_study(n_series=5, n_slices=6, patient_id="PATREQ5", accession="REQ_MANY"),
    }


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    tmp = tmp_path_factory.mktemp("req-orthanc")
    node_port = free_port()
    studies = _studies()
    files = {key: write_datasets(make_study(spec), tmp / "files" / key) for key, spec in studies.items()}
    orthanc = OrthancPeer(tmp / "orthanc", ae_title="PACS", modalities={"node": (NODE_AE, "127.0.0.1", node_port)})
    with orthanc:
        orthanc.load([tmp / "files"])
        assert orthanc.instance_count() == sum(len(f) for f in files.values())
        yield Pacs(orthanc, node_port, studies, files)


@pytest.fixture
def node_for(start_node: Callable[..., Node], pacs: Pacs) -> Callable[..., Node]:
    def factory(requests: dict[str, Any] | None = None, database_url: str | None = None, **peer_extra: Any) -> Node:
        return start_node(node={"port": pacs.node_port}, peers=pacs.peer(**peer_extra), requests={**FAST, **(requests or {})},
                          database={"url": database_url})

    return factory


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The state backend: SQLite in var/ (None), or a real PostgreSQL server started for the test."""
    if request.param == "sqlite":
        yield None
        return
    with PostgresPeer() as pg:
        yield pg.url


def test_a_request_by_accession_pulls_the_whole_study_and_ends_done(
    node_for: Callable[..., Node], pacs: Pacs, backend: str | None
) -> None:
    node = node_for(database_url=backend)
    assert node.store.dialect == ("postgresql" if backend else "sqlite")
    drop(node, "by-accession.yaml", "studies:\n  - accession: REQ_A\noutputs: [excel]\n")
    doc = wait_state(node, "by-accession")
    spec = pacs.studies["acc"]
    assert series_counts(node, spec.study_uid) == expected_counts(spec)
    (study,) = doc["studies"]
    assert study["study_uid"] == spec.study_uid
    assert study["state"] == "done"
    assert study["instances"] == "12/12"
    assert study["outbox"]
    assert (node.config.paths.inbox / "done" / "by-accession.yaml").exists()
    assert not (node.config.paths.inbox / "by-accession.yaml").exists()


def test_a_request_by_patient_and_date_range_with_a_series_filter_drops_the_derived_series(
    node_for: Callable[..., Node], pacs: Pacs
) -> None:
    node = node_for()
    drop(node, "by-patient.yml", "studies:\n  - patient_id: PATREQ2\n    study_date: 20250101-20251231\n"
                                 "series_filter:\n  exclude_derived: true\noutputs: [excel]\n")
    doc = wait_state(node, "by-patient")
    spec = pacs.studies["pat_in"]
    chest, mpr = spec.series
    assert series_counts(node, spec.study_uid) == {chest.series_uid: 5}
    assert node.store.instance_count(pacs.studies["pat_out"].study_uid) == 0  # 2024: outside the date range
    (study,) = doc["studies"]
    assert study["state"] == "done"
    assert study["series"] == {"complete": 1, "skipped": 1}
    (reason,) = node.store.query("SELECT reason FROM request_series WHERE series_uid=?", (mpr.series_uid,))[0]
    assert reason == "derived: ImageType SECONDARY"  # Orthanc answers ImageType at SERIES level


def test_a_csv_of_accession_numbers_pulls_every_study(node_for: Callable[..., Node], pacs: Pacs) -> None:
    node = node_for()
    drop(node, "cohort.csv", "PatientName;AccessionNumber\nx;REQ_D\n\ny;REQ_E\n")
    doc = wait_state(node, "cohort")
    assert [s["accession"] for s in doc["studies"]] == ["REQ_D", "REQ_E"]
    for key in ("csv1", "csv2"):
        spec = pacs.studies[key]
        assert series_counts(node, spec.study_uid) == expected_counts(spec)
    assert (node.config.paths.inbox / "done" / "cohort.csv").exists()


def test_the_same_file_dropped_again_is_recognised_and_not_run_twice(node_for: Callable[..., Node], pacs: Pacs) -> None:
    node = node_for()
    text = "studies:\n  - accession: REQ_D\noutputs: [excel]\n"
    drop(node, "first.yaml", text)
    wait_state(node, "first")
    drop(node, "again.yaml", text)
    error = node.config.paths.inbox / "failed" / "again.yaml.error.txt"
    wait_for(error.exists, 30, "the duplicate's error file")
    assert "same content as request 'first'" in error.read_text(encoding="utf-8")
    assert node.store.query("SELECT COUNT(*) FROM requests")[0][0] == 1
    (moves,) = node.store.query("SELECT SUM(moves) FROM request_series")[0]
    assert moves == 1


def test_an_accession_the_pacs_does_not_have_fails_at_once_with_the_reason(node_for: Callable[..., Node]) -> None:
    node = node_for()
    drop(node, "unknown.yaml", "studies:\n  - accession: NO_SUCH_ACC\n")
    doc = wait_state(node, "unknown", ("failed",), timeout=30)
    (query,) = doc["queries"]
    assert query["attempts"] == 1
    assert "C-FIND found no study for accession NO_SUCH_ACC" in doc["reason"]
    error = node.config.paths.inbox / "failed" / "unknown.yaml.error.txt"
    assert "NO_SUCH_ACC" in error.read_text(encoding="utf-8")


def test_a_peer_that_rejects_our_ae_fails_fast_without_a_retry_loop(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    with OrthancPeer(tmp_path / "strict", ae_title="STRICT", allow_unknown=False) as strict:
        node = start_node(peers={"pacs": {"ae_title": "STRICT", "host": "127.0.0.1", "port": strict.dicom_port}},
                          requests=FAST)
        drop(node, "rejected.yaml", "studies:\n  - accession: REQ_A\n")
        doc = wait_state(node, "rejected", ("failed",), timeout=30)
    (query,) = doc["queries"]
    assert query["attempts"] == 1
    assert "association rejected (permanent): calling AE title not recognised" in query["reason"]


def test_a_pacs_stopped_during_a_move_is_retried_with_backoff_and_the_request_completes(
    node_for: Callable[..., Node], pacs: Pacs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node.pull.scheduler")
    node = node_for()
    spec = pacs.studies["big"]
    drop(node, "big.yaml", "studies:\n  - accession: REQ_BIG\noutputs: [excel]\n")
    # Kill Orthanc once the move has delivered part of the long series: the move breaks in the middle.
    wait_for(lambda: node.store.instance_count(spec.study_uid) > 0, 60, "the first instances of the move")
    orthanc = pacs.orthanc
    assert orthanc.proc is not None
    orthanc.proc.kill()
    orthanc.proc.wait(timeout=20)
    orthanc.proc = None
    at_kill = node.store.instance_count(spec.study_uid)
    assert at_kill < 403
    wait_for(lambda: (status(node, "big").get("studies") or [{}])[0].get("attempts", 0) >= 1, 60, "a failed attempt")
    orthanc.start()
    doc = wait_state(node, "big")
    assert series_counts(node, spec.study_uid) == expected_counts(spec)
    (study,) = doc["studies"]
    assert study["attempts"] >= 1
    # Gap-fill: the retry asked only for the instances that had not arrived, not the whole series again.
    long_series = spec.series[0].series_uid
    gaps = [r.getMessage() for r in caplog.records if "gap-fill of series " + long_series in r.getMessage()]
    assert gaps, "the retry moved the whole series again"
    found = re.search(r": (\d+) of 400 instances missing", gaps[0])
    assert found is not None, gaps[0]
    assert 0 < int(found.group(1)) <= 400 - at_kill


def test_a_closed_time_window_waits_and_the_request_runs_when_it_opens(
    node_for: Callable[..., Node], pacs: Pacs
) -> None:
    node = node_for(windows=[{"start": "20:00", "end": "06:00"}])
    # A clock that reads 19:59:58 now and runs at real speed: the window opens two seconds in.
    base = datetime.now().astimezone().replace(hour=19, minute=59, second=58, microsecond=0)
    t0 = time.monotonic()
    node.scheduler.clock = lambda: base + timedelta(seconds=time.monotonic() - t0)
    drop(node, "night.yaml", "studies:\n  - accession: REQ_E\noutputs: [excel]\n")
    waiting = wait_for(lambda: status(node, "night").get("queries", [{}])[0].get("state") == "waiting", 30, "waiting")
    assert waiting
    assert node.store.instance_count(pacs.studies["csv2"].study_uid) == 0
    doc = wait_state(node, "night")
    assert doc["studies"][0]["state"] == "done"


def test_a_node_restarted_in_the_middle_of_a_request_resumes_without_moving_anything_twice(
    tmp_path: Path, pacs: Pacs
) -> None:
    spec = pacs.studies["many"]
    config = make_config(tmp_path / "root", node={"port": pacs.node_port}, peers=pacs.peer(), requests=FAST)
    first_series_done = threading.Event()
    node = Node(config)
    original = node.scheduler._pause_point
    calls = []

    def pause_point(peer: Any, rid: int) -> None:
        # Before the second series: let the test stop the node here, so the stop lands mid-request every time.
        calls.append(peer)
        if len(calls) == 2:
            first_series_done.set()
            node.scheduler._stopping.wait(30)
        original(peer, rid)

    node.scheduler._pause_point = pause_point  # type: ignore[method-assign]
    node.start()
    try:
        drop(node, "restart.yaml", "studies:\n  - accession: REQ_MANY\noutputs: [excel]\n")
        assert first_series_done.wait(60)
        node.stop(drain_timeout=5)
    finally:
        if node._started:
            node.stop(0)
    assert len(series_counts_in(config, spec.study_uid)) == 1
    resumed = Node(config)
    resumed.start()
    try:
        doc = wait_state(resumed, "restart")
        assert series_counts(resumed, spec.study_uid) == expected_counts(spec)
        moves = resumed.store.query("SELECT series_uid, moves FROM request_series WHERE request_id=1")
        assert sorted(int(m) for _, m in moves) == [1] * 5  # every series moved exactly once across the restart
        assert resumed.store.query("SELECT COUNT(*) FROM requests")[0][0] == 1
        assert doc["studies"][0]["state"] == "done"
    finally:
        resumed.stop(5)


def series_counts_in(config: Any, study_uid: str) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(config.paths.database) as db:
        rows = db.execute("SELECT series_uid, COUNT(*) FROM instances WHERE study_uid=? GROUP BY series_uid", (study_uid,))
        return {str(u): int(n) for u, n in rows}


def test_the_find_cli_prints_the_matching_studies(pacs: Pacs, tmp_path: Path) -> None:
    config_file = tmp_path / "node.yaml"
    data = config_dict(tmp_path, peers=pacs.peer())
    config_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = io.StringIO()
    with redirect_stdout(out):
        assert daemon.main(["--config", str(config_file), "find", "pacs", "--patient-id", "PATREQ2",
                            "--study-date", "20250101-20251231"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[-1] == "1 study"
    assert pacs.studies["pat_in"].study_uid in lines[0]
    assert "accession REQ_B" in lines[0]


def test_a_request_for_a_study_pulled_before_is_complete_without_moving_it_again(
    node_for: Callable[..., Node], pacs: Pacs
) -> None:
    node = node_for()
    Path(node.config.paths.inbox / "one.yaml").write_text("studies:\n  - accession: REQ_D\noutputs: [excel]\n")
    wait_state(node, "one")
    Path(node.config.paths.inbox / "two.yaml").write_text("priority: 1\nstudies:\n  - accession: REQ_D\n")
    doc = wait_state(node, "two")
    assert doc["studies"][0]["state"] == "done"
    assert node.store.query("SELECT SUM(moves) FROM request_series")[0][0] == 1


def test_a_node_killed_in_the_middle_of_a_move_resumes_after_restart_and_asks_only_for_what_is_missing(
    node_process: Callable[..., NodeProcess], pacs: Pacs
) -> None:
    spec = pacs.studies["big"]
    proc = node_process(node={"port": pacs.node_port}, peers=pacs.peer(), requests=FAST, logging={"level": "INFO"})
    inbox = Path(proc.data["paths"]["inbox"])
    (inbox / ".kill.part").write_text("studies:\n  - accession: REQ_BIG\noutputs: [excel]\n", encoding="utf-8")
    (inbox / ".kill.part").rename(inbox / "kill.yaml")

    def count() -> int:
        with sqlite3.connect(proc.var / "node.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM instances WHERE study_uid=?", (spec.study_uid,)).fetchone()[0])

    wait_for(lambda: count() >= 20, 60, "part of the move to arrive")
    proc.kill()  # SIGKILL: no chance to stop between series
    at_kill = count()
    assert at_kill < 403
    proc.restart()
    outbox = Path(proc.data["paths"]["outbox"])

    def final() -> dict[str, Any] | None:
        path = outbox / "requests" / "kill.status.yaml"
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
        return doc if doc and doc.get("state") == "done" else None

    doc = wait_for(final, 120, "the request to finish after the restart")
    assert doc["studies"][0]["instances"] == "403/403"
    assert count() == 403
    with sqlite3.connect(proc.var / "node.db") as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
        moves = dict(db.execute("SELECT series_uid, moves FROM request_series").fetchall())
    assert moves[spec.series[1].series_uid] == 1
    assert moves[spec.series[0].series_uid] == 2  # the interrupted move, then the gap-fill
    found = re.search(r"gap-fill of series \S+: (\d+) of 400 instances missing", proc.log())
    assert found is not None
    assert int(found.group(1)) <= 400 - at_kill
    assert (inbox / "done" / "kill.yaml").exists()


def test_a_peer_set_to_c_get_delivers_over_the_same_association(node_for: Callable[..., Node], pacs: Pacs) -> None:
    node = node_for(retrieve="get")
    drop(node, "by-get.yaml", "studies:\n  - accession: REQ_A\noutputs: [excel]\n")
    doc = wait_state(node, "by-get")
    spec = pacs.studies["acc"]
    assert series_counts(node, spec.study_uid) == expected_counts(spec)
    assert doc["studies"][0]["instances"] == "12/12"
    rows = node.store.query("SELECT DISTINCT calling_ae, assoc_id FROM instances WHERE study_uid=?", (spec.study_uid,))
    assert [(ae, bool(assoc)) for ae, assoc in rows] == [("PACS", False)]  # the C-GET callback, not our SCP
