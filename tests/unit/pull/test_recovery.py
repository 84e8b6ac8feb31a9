"""The request lifecycle killed at each step: at start the inbox repairs what the kill left half done, so every
request ends exactly once in done/ (or failed/) with its final status file, and a complete study without its
marker is processed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from node.process import completion
from node.process.processor import Processor
from node.pull.inbox import Inbox
from node.pull.scheduler import Scheduler
from node.store.store import Store
from tests.support.waiting import wait_for
from toolkit.nodeproc import make_config

GOOD = "studies:\n  - accession: A1\n"


@pytest.fixture
def make_inbox(tmp_path: Path) -> Iterator[Callable[[], Inbox]]:
    """A factory: each call is the inbox of a (re)started node on the same folders and database."""
    config = make_config(tmp_path, requests={"settle_s": 0})
    stores: list[Store] = []

    def factory() -> Inbox:
        for s in stores:
            s.close()
        store = Store(config.paths)
        stores.append(store)
        return Inbox(config, store, Scheduler(config, store))

    yield factory
    for s in stores:
        s.close()


def submitted(inbox: Inbox, name: str = "r.yaml", text: str = GOOD) -> int:
    (inbox.root / name).write_text(text)
    rid = inbox.take(inbox.root / name)
    assert rid is not None
    return rid


def finish_in_db(inbox: Inbox, rid: int, state: str = "done", reason: str | None = None) -> None:
    with inbox.store.transaction() as db:
        db.execute("UPDATE requests SET state=?, reason=? WHERE id=?", (state, reason, rid))


def settled(inbox: Inbox, rid: int, folder: str = "done") -> None:
    """The end every kill must converge to: one file in its folder, the row agreeing, the final status."""
    (name, file_name, location) = inbox.store.query("SELECT name, file_name, file_location FROM requests WHERE id=?",
                                                    (rid,))[0]
    assert location == folder
    files = [p.name for p in (inbox.root / folder).iterdir() if not p.name.endswith(".error.txt")]
    assert files == [file_name]
    assert [p for p in inbox.root.iterdir() if p.is_file()] == []
    assert list((inbox.root / "active").iterdir()) == []
    status = inbox.status_path(str(name)).read_text(encoding="utf-8")
    assert status.splitlines()[0].endswith(", final")
    assert yaml.safe_load(status)["state"] == ("done" if folder == "done" else "failed")
    assert inbox.store.query("SELECT COUNT(*) FROM requests") == [(1,)]


def test_killed_after_the_file_moved_to_active_before_the_database_said_so(make_inbox: Callable[[], Inbox]) -> None:
    inbox = make_inbox()
    rid = submitted(inbox)
    with inbox.store.transaction() as db:  # the row still says inbox/, the file is in active/
        db.execute("UPDATE requests SET file_location='inbox' WHERE id=?", (rid,))
    inbox = make_inbox()
    inbox.recover()
    assert inbox.store.query("SELECT file_location FROM requests") == [("active",)]
    finish_in_db(inbox, rid)
    inbox.request_changed(rid)
    settled(inbox, rid)


def test_killed_after_the_request_was_done_in_the_database_before_its_file_moved(make_inbox: Callable[[], Inbox]) -> None:
    inbox = make_inbox()
    rid = submitted(inbox)
    finish_in_db(inbox, rid)
    inbox = make_inbox()
    inbox.recover()
    settled(inbox, rid)


def test_killed_after_the_file_moved_to_done_before_the_database_said_so(make_inbox: Callable[[], Inbox]) -> None:
    inbox = make_inbox()
    rid = submitted(inbox)
    (inbox.root / "done").mkdir(exist_ok=True)
    (inbox.root / "done" / "r.yaml").write_text("an older request of the same name\n")  # the move had to rename
    finish_in_db(inbox, rid)
    os.replace(inbox.root / "active" / "r.yaml", inbox.root / "done" / "r-2.yaml")
    inbox = make_inbox()
    inbox.recover()
    (file_name, location) = inbox.store.query("SELECT file_name, file_location FROM requests")[0]
    assert (file_name, location) == ("r-2.yaml", "done")
    assert inbox.status_path("r").read_text(encoding="utf-8").splitlines()[0].endswith(", final")
    assert list((inbox.root / "active").iterdir()) == []


def test_killed_after_the_database_said_done_before_the_final_status_was_written(make_inbox: Callable[[], Inbox]) -> None:
    inbox = make_inbox()
    rid = submitted(inbox)
    finish_in_db(inbox, rid)
    os.replace(inbox.root / "active" / "r.yaml", inbox.root / "done" / "r.yaml")
    with inbox.store.transaction() as db:
        db.execute("UPDATE requests SET file_name='r.yaml', file_location='done' WHERE id=?", (rid,))
    assert not inbox.status_path("r").read_text(encoding="utf-8").splitlines()[0].endswith(", final")
    inbox = make_inbox()
    inbox.recover()
    settled(inbox, rid)


def test_killed_after_a_failed_request_moved_before_its_error_file_was_written(make_inbox: Callable[[], Inbox]) -> None:
    inbox = make_inbox()
    rid = submitted(inbox)
    finish_in_db(inbox, rid, "failed", "C-FIND found no study for accession A1 on pacs")
    os.replace(inbox.root / "active" / "r.yaml", inbox.root / "failed" / "r.yaml")
    inbox = make_inbox()
    inbox.recover()
    settled(inbox, rid, "failed")
    assert "C-FIND found no study" in (inbox.root / "failed" / "r.yaml.error.txt").read_text(encoding="utf-8")


def test_a_settled_request_is_left_alone_at_start(make_inbox: Callable[[], Inbox]) -> None:
    inbox = make_inbox()
    rid = submitted(inbox)
    finish_in_db(inbox, rid)
    inbox.request_changed(rid)
    settled(inbox, rid)
    status = inbox.status_path("r")
    before = status.stat().st_mtime_ns
    time.sleep(0.01)
    inbox = make_inbox()
    inbox.recover()
    assert status.stat().st_mtime_ns == before
    settled(inbox, rid)


def test_a_study_complete_without_its_marker_gets_one_at_start(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = Store(config.paths)
    try:
        now = time.time()
        with store.transaction() as db:
            db.execute("INSERT INTO studies(study_uid, first_received, last_received, n_instances, state, state_changed)"
                       " VALUES ('1.2.3', ?, ?, 1, 'receiving', ?)", (now, now, now))
        from node.store import state

        version = state.mark_complete(store, "1.2.3", "test")  # committed; the kill came before the marker
        assert version == 1 and not completion.marker_for(store, "1.2.3", 1)
        Processor(config, store)._recover()
        assert completion.marker_for(store, "1.2.3", 1)
    finally:
        store.close()


def test_recovery_and_the_status_thread_finishing_the_same_request_at_once_both_succeed(
    make_inbox: Callable[[], Inbox],
) -> None:
    import threading

    inbox = make_inbox()
    rid = submitted(inbox)
    finish_in_db(inbox, rid)
    inbox = make_inbox()
    errors: list[BaseException] = []

    def run(fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(inbox.recover,)),
               threading.Thread(target=run, args=(lambda: inbox.request_changed(rid),))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    settled(inbox, rid)


def test_a_merged_workbook_missed_by_a_stop_is_built_at_the_next_start(make_inbox: Callable[[], Inbox]) -> None:
    from openpyxl import Workbook, load_workbook

    inbox = make_inbox()
    rid = submitted(inbox, text="studies:\n  - accession: A1\noutputs: [excel_merged]\n")
    folder = inbox.config.paths.outbox / "P1_20250101_A1"
    folder.mkdir(parents=True)
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Series_Summary"
    sheet.append(["Series Number"])
    sheet.append([1])
    book.save(folder / "metadata.xlsx")
    with inbox.store.transaction() as db:
        db.execute("INSERT INTO studies(study_uid, first_received, last_received, state, state_changed, outbox_path)"
                   " VALUES ('1.2.3', 0, 0, 'done', 0, ?)", (folder.name,))
        db.execute("INSERT INTO request_studies(request_id, study_uid, state, next_attempt) VALUES (?, '1.2.3',"
                   " 'complete', 0)", (rid,))
    finish_in_db(inbox, rid)
    inbox.request_changed(rid)  # not started: built inline, named in the final status
    name = inbox.store.query("SELECT name FROM requests WHERE id=?", (rid,))[0][0]
    merged = inbox.merged_workbook_path(name)
    assert merged.exists() and "merged_workbook:" in inbox.status_path(name).read_text()
    merged.unlink()  # as if the node had stopped before the merge thread got to it
    restarted = make_inbox()
    restarted.start()
    try:
        wait_for(merged.exists, timeout=30, what="the merged workbook built at start")
        rows = list(load_workbook(merged, read_only=True)["Series_Summary"].iter_rows(values_only=True))
        assert rows == [("Study Folder", "Series Number"), (folder.name, 1)]
    finally:
        restarted.stop()
