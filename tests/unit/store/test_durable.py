"""Group commit and shared folder fsyncs: fewer fsyncs, the same promise (nothing answered before it is on disk)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.store.durable import DirSync, GroupCommit


class Ledger:
    """A SQLite table behind a transaction factory that counts commits and can be held open."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("CREATE TABLE rows(k TEXT PRIMARY KEY)")
        self.lock = threading.Lock()
        self.commits = 0
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self.lock:
            self.inside.set()
            self.gate.wait(10)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            self.commits += 1

    def keys(self) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT k FROM rows")}


def test_rows_queued_while_a_commit_runs_are_committed_together_by_the_next_one(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "x.db")
    group = GroupCommit(ledger.transaction)
    ledger.gate.clear()  # the first commit waits inside its transaction
    first = threading.Thread(target=group.run, args=(lambda db: db.execute("INSERT INTO rows VALUES ('a')"),))
    first.start()
    assert ledger.inside.wait(10)
    others = [threading.Thread(target=group.run, args=(lambda db, k=k: db.execute("INSERT INTO rows VALUES (?)", (k,)),))
              for k in "bcdef"]
    for t in others:
        t.start()
    while len(group._queue) < 5:  # all five queued behind the running commit
        threading.Event().wait(0.001)
    ledger.gate.set()
    for t in [first, *others]:
        t.join(10)
    assert ledger.keys() == set("abcdef")
    assert ledger.commits == 2  # one for 'a', one for the five that queued meanwhile
    assert (group.commits, group.jobs) == (2, 6)


def test_one_bad_row_in_a_batch_fails_only_its_own_caller(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "x.db")
    ledger.db.execute("INSERT INTO rows VALUES ('taken')")
    group = GroupCommit(ledger.transaction)
    ledger.gate.clear()
    blocker = threading.Thread(target=group.run, args=(lambda db: db.execute("INSERT INTO rows VALUES ('0')"),))
    blocker.start()
    assert ledger.inside.wait(10)
    errors: dict[str, BaseException] = {}

    def insert(key: str) -> None:
        try:
            group.run(lambda db: db.execute("INSERT INTO rows VALUES (?)", (key,)))
        except sqlite3.IntegrityError as exc:
            errors[key] = exc

    callers = [threading.Thread(target=insert, args=(k,)) for k in ("1", "taken", "2")]
    for t in callers:
        t.start()
    while len(group._queue) < 3:
        threading.Event().wait(0.001)
    ledger.gate.set()
    for t in [blocker, *callers]:
        t.join(10)
    assert set(errors) == {"taken"}  # the duplicate key fails; its batch mates are committed on their own
    assert ledger.keys() == {"taken", "0", "1", "2"}


def test_a_failed_commit_is_raised_to_the_caller_and_nothing_is_kept(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "x.db")
    group = GroupCommit(ledger.transaction)
    with pytest.raises(sqlite3.OperationalError):
        group.run(lambda db: db.execute("INSERT INTO missing VALUES (1)"))
    group.run(lambda db: db.execute("INSERT INTO rows VALUES ('after')"))
    assert ledger.keys() == {"after"}


class Tickets:
    """DirSync's ticket counter, observable: a test can wait until the renames it started have taken theirs."""

    def __init__(self) -> None:
        self.n = 0
        self.changed = threading.Condition()

    def __iter__(self) -> Tickets:
        return self

    def __next__(self) -> int:
        with self.changed:
            value = self.n
            self.n += 1
            self.changed.notify_all()
            return value

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.n >= count, timeout=10)


def test_renames_made_while_a_folder_fsync_runs_share_the_next_one(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[Path] = []

    def slow_fsync(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            started.set()
            release.wait(10)

    sync = DirSync(slow_fsync)
    tickets = Tickets()
    sync._tickets = tickets  # type: ignore[assignment]
    first = threading.Thread(target=sync.after_rename, args=(tmp_path,))
    first.start()
    assert started.wait(10)
    # Renamed after the running fsync started: it does not cover them, the next one does, for all of them.
    later = [threading.Thread(target=sync.after_rename, args=(tmp_path,)) for _ in range(4)]
    for t in later:
        t.start()
    tickets.wait_for(2 + 4)  # the first rename's ticket and its fsync's start, then one ticket per later rename
    release.set()
    for t in [first, *later]:
        t.join(10)
    assert len(calls) == 2


def test_renames_one_after_another_each_get_their_own_folder_fsync(tmp_path: Path) -> None:
    calls: list[Path] = []
    sync = DirSync(calls.append)
    for _ in range(3):
        sync.after_rename(tmp_path)
    sync.after_rename(tmp_path / "other")
    assert calls == [tmp_path] * 3 + [tmp_path / "other"]
