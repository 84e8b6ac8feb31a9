"""The inbox without a network: when a file counts, where it goes, what the status file and error files say."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from node.pull.inbox import Inbox, status_document, write_request
from node.pull.scheduler import Scheduler
from node.store.store import Store
from toolkit.nodeproc import make_config

GOOD = "studies:\n  - accession: A1\n"


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    config = make_config(tmp_path, requests={"settle_s": 5})
    store = Store(config.paths)
    box = Inbox(config, store, Scheduler(config, store))
    try:
        yield box
    finally:
        store.close()


def put(inbox: Inbox, name: str, content: str | bytes, age: float = 60.0) -> Path:
    path = inbox.root / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def error_text(inbox: Inbox, name: str) -> str:
    return (inbox.root / "failed" / f"{name}.error.txt").read_text(encoding="utf-8")


def test_a_file_still_being_written_waits_until_it_has_been_unchanged_for_settle_s(inbox: Inbox) -> None:
    put(inbox, "fresh.yaml", GOOD, age=1.0)
    inbox.rescan()
    wait = inbox.process_pending()
    assert 3.5 < wait <= 4.0
    assert (inbox.root / "fresh.yaml").exists()
    inbox.process_pending(now=time.time() + 4.5)
    assert (inbox.root / "active" / "fresh.yaml").exists()


def test_a_file_renamed_into_the_inbox_counts_at_once(inbox: Inbox) -> None:
    path = put(inbox, "renamed.yaml", GOOD, age=0.0)
    inbox.note(path, renamed=True)
    assert inbox.process_pending() == float("inf")
    assert (inbox.root / "active" / "renamed.yaml").exists()


def test_hidden_files_and_other_extensions_are_left_alone(inbox: Inbox) -> None:
    for name in (".part.yaml", "notes.txt", "r.yaml.tmp"):
        put(inbox, name, GOOD)
    inbox.rescan()
    inbox.process_pending()
    assert sorted(p.name for p in inbox.root.iterdir() if p.is_file()) == [".part.yaml", "notes.txt", "r.yaml.tmp"]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("syntax.yaml", "studies:\n  - accession: [A1\n", "At line 3, column 1: YAML syntax error"),
        ("unknown-key.yaml", "studies:\n  - accession: A1\nsereis_filter: {}\n",
         "At '<top level>': Additional properties are not allowed ('sereis_filter' was unexpected)"),
        ("types.yaml", "studies:\n  - accession: A1\npriority: urgent\n", "At 'priority': 'urgent' is not of type 'integer'"),
        ("empty-list.yaml", "studies: []\n", "At 'studies': [] should be non-empty"),
        ("peer.yaml", "peer: nowhere\nstudies:\n  - accession: A1\n", "At 'peer': unknown peer 'nowhere'"),
        ("garbage.yaml", bytes(range(256)) * 4, "At byte 0: NUL byte: this is a binary file"),
        ("huge.yaml", b"# " + b"x" * 2_000_000, "At '<file>': 2000002 bytes is larger than the limit of 1048576 bytes"),
        ("empty.csv", "Accession\n", "At line 2: no accession numbers below the header"),
    ],
)
def test_a_bad_file_goes_to_failed_with_a_readable_reason(inbox: Inbox, name: str, content: str | bytes, expected: str) -> None:
    put(inbox, name, content)
    inbox.rescan()
    inbox.process_pending()
    assert not (inbox.root / name).exists()
    assert (inbox.root / "failed" / name).exists()
    text = error_text(inbox, name)
    assert expected in text, text
    assert "Nothing was run" in text
    assert inbox.store.query("SELECT COUNT(*) FROM requests")[0][0] == 0


def test_a_good_file_becomes_a_queued_request_with_a_status_file(inbox: Inbox) -> None:
    put(inbox, "cohort.yaml", GOOD)
    inbox.rescan()
    inbox.process_pending()
    assert (inbox.root / "active" / "cohort.yaml").exists()
    doc = yaml.safe_load((inbox.status_dir / "cohort.status.yaml").read_text(encoding="utf-8"))
    assert doc["request"] == "cohort"
    assert doc["state"] == "queued"
    assert doc["file"] == "inbox/active/cohort.yaml"
    assert doc["queries"] == [{"query": {"accession": "A1"}, "state": "queued"}]
    assert doc["studies"] == []


def test_the_same_content_dropped_again_is_recognised_and_not_run_twice(inbox: Inbox) -> None:
    put(inbox, "one.yaml", GOOD)
    inbox.rescan()
    inbox.process_pending()
    put(inbox, "two.yaml", GOOD)
    inbox.rescan()
    inbox.process_pending()
    assert "same content as request 'one'" in error_text(inbox, "two.yaml")
    assert inbox.store.query("SELECT COUNT(*) FROM requests")[0][0] == 1


def test_a_stop_between_recording_and_moving_a_file_is_finished_at_the_next_scan(inbox: Inbox) -> None:
    put(inbox, "r.yaml", GOOD)
    rid = inbox.take(inbox.root / "r.yaml")
    assert rid is not None
    # Put the file back as if the node had stopped right after recording the request.
    os.replace(inbox.root / "active" / "r.yaml", inbox.root / "r.yaml")
    with inbox.store.transaction() as db:
        db.execute("UPDATE requests SET file_location='inbox'")
    assert inbox.take(inbox.root / "r.yaml") == rid
    assert (inbox.root / "active" / "r.yaml").exists()
    assert inbox.store.query("SELECT COUNT(*) FROM requests")[0][0] == 1


def watch_processing(inbox: Inbox) -> None:
    """What the request-status thread does every few seconds: notice the processor's progress, report it."""
    inbox.scheduler.changes.watch_processing()
    inbox.scheduler.changes.flush()


def test_a_request_whose_studies_are_done_moves_to_done_with_the_outbox_paths(inbox: Inbox) -> None:
    put(inbox, "r.yaml", GOOD)
    rid = inbox.take(inbox.root / "r.yaml")
    now = time.time()
    with inbox.store.transaction() as db:
        db.execute("UPDATE request_queries SET state='found', found=1")
        db.execute("INSERT INTO request_studies(request_id, query_id, study_uid, accession, state, next_attempt, expected,"
                   " received) VALUES (?, 1, '1.2.3', 'A1', 'complete', 0, 5, 5)", (rid,))
        db.execute("INSERT INTO studies(study_uid, first_received, last_received, state, state_changed, outbox_path)"
                   " VALUES ('1.2.3', ?, ?, 'processing', ?, NULL)", (now, now, now))
    watch_processing(inbox)
    doc = yaml.safe_load((inbox.status_dir / "r.status.yaml").read_text(encoding="utf-8"))
    assert (doc["state"], doc["studies"][0]["state"]) == ("pulled", "processing")
    with inbox.store.transaction() as db:
        db.execute("UPDATE studies SET state='done', outbox_path='P_20250101_A1'")
    watch_processing(inbox)
    doc = yaml.safe_load((inbox.status_dir / "r.status.yaml").read_text(encoding="utf-8"))
    assert doc["state"] == "done"
    assert doc["studies"][0] == {"study_uid": "1.2.3", "accession": "A1", "patient_id": None, "study_date": None,
                                 "state": "done", "instances": "5/5", "outbox": "P_20250101_A1"}
    assert doc["file"] == "inbox/done/r.yaml"
    assert (inbox.root / "done" / "r.yaml").exists()


def test_a_failed_study_fails_the_request_with_its_reason_in_the_error_file(inbox: Inbox) -> None:
    put(inbox, "r.yaml", GOOD)
    rid = inbox.take(inbox.root / "r.yaml")
    with inbox.store.transaction() as db:
        db.execute("UPDATE request_queries SET state='failed', reason='C-FIND found no study for accession A1 on pacs'")
    inbox.scheduler.changes.mark(int(rid or 0))
    assert "C-FIND found no study for accession A1" in error_text(inbox, "r.yaml")
    doc = status_document(inbox.store, int(rid or 0))
    assert doc is not None and doc["state"] == "failed"


def test_a_new_file_with_an_old_name_gets_its_own_request_name(inbox: Inbox) -> None:
    put(inbox, "r.yaml", GOOD)
    inbox.take(inbox.root / "r.yaml")
    put(inbox, "r.yaml", GOOD + "  - accession: A2\n")
    inbox.take(inbox.root / "r.yaml")
    assert [n for (n,) in inbox.store.query("SELECT name FROM requests ORDER BY id")] == ["r", "r-2"]
    assert (inbox.root / "active" / "r-2.yaml").exists()


def test_write_request_renames_a_whole_file_into_the_inbox(tmp_path: Path) -> None:
    first = write_request(tmp_path, "req", GOOD)
    second = write_request(tmp_path, "req", GOOD)
    assert (first.name, second.name) == ("req.yaml", "req-2.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["req-2.yaml", "req.yaml"]


def test_dicom_dropped_next_to_the_requests_is_left_alone_with_a_warning_naming_the_import_folder(tmp_path, caplog):
    cfg = make_config(tmp_path)
    store = Store(cfg.paths)
    try:
        inbox = Inbox(cfg, store, Scheduler(cfg, store))
        (cfg.paths.inbox / "scan.dcm").write_bytes(b"\0" * 200)
        (cfg.paths.inbox / "import").mkdir()
        with caplog.at_level("WARNING", logger="node.pull.inbox"):
            inbox.rescan()
            inbox.rescan()
        warnings = [r.getMessage() for r in caplog.records if "scan.dcm" in r.getMessage()]
        assert len(warnings) == 1 and "inbox/import/" in warnings[0]
        assert not any("import is not" in r.getMessage() for r in caplog.records)
        assert (cfg.paths.inbox / "scan.dcm").exists()
    finally:
        store.close()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("studies:\n  - patient_id: P1\n    study_date: 2025-13-45\n",
         "At 'studies[0].study_date': '20251345' is not a calendar date"),
        ("not_before: 2026-02-30\nstudies:\n  - accession: A1\n", "At 'not_before':"),
    ],
    ids=["impossible study date", "impossible not_before"],
)
def test_an_unquoted_impossible_date_fails_the_file_with_its_location_instead_of_jamming_the_inbox(
    inbox: Inbox, content: str, expected: str
) -> None:
    put(inbox, "typo.yaml", content)
    put(inbox, "good.yaml", GOOD)
    inbox.rescan()
    inbox.process_pending()
    assert expected in error_text(inbox, "typo.yaml")
    assert not (inbox.root / "typo.yaml").exists() and not (inbox.root / "good.yaml").exists()
    assert inbox.store.query("SELECT COUNT(*) FROM requests")[0][0] == 1


def test_an_unquoted_yaml_date_is_accepted_as_a_dicom_date(inbox: Inbox) -> None:
    put(inbox, "dates.yaml", "studies:\n  - patient_id: P1\n    study_date: 2025-01-01-2025-01-31\n"
                             "  - patient_id: P2\n    study_date: 2025-01-31\n")
    inbox.rescan()
    inbox.process_pending()
    queries = [q for (q,) in inbox.store.query("SELECT query FROM request_queries ORDER BY idx")]
    assert '"20250101-20250131"' in queries[0] and '"20250131"' in queries[1]


def test_an_unexpected_error_on_one_file_moves_it_to_failed_and_the_next_file_still_runs(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_take = inbox.take

    def take(path: Path) -> int | None:
        if path.name == "bad.yaml":
            raise RecursionError("maximum recursion depth exceeded")
        return real_take(path)

    monkeypatch.setattr(inbox, "take", take)
    put(inbox, "bad.yaml", GOOD.replace("A1", "B1"))
    put(inbox, "good.yaml", GOOD)
    inbox.rescan()
    inbox.process_pending()
    assert "RecursionError" in error_text(inbox, "bad.yaml")
    assert inbox.store.query("SELECT COUNT(*) FROM requests")[0][0] == 1
