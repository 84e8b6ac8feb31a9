"""Making instances durable together: one index commit and one directory fsync for concurrent C-STOREs.

The rule does not change: no C-STORE is answered before its file, the directory entry that names it and its
index row are on disk. What changes is who pays: when several associations store at once, each does not wait
for a commit (an fsync of the write-ahead log) and a directory fsync of its own: the first to get there does
one for all that have queued, and the others find their work done.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

Transaction = Callable[[], contextlib.AbstractContextManager[Any]]


class _Job:
    __slots__ = ("done", "error", "work")

    def __init__(self, work: Callable[[Any], None]) -> None:
        self.work = work
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    """Run index writes of concurrent callers in one transaction (one commit, one log fsync).

    `run(work)` returns once `work(db)` is committed, or raises what its transaction raised. When the shared
    transaction fails, each job is tried again in a transaction of its own, so one bad row (or a disk that
    filled up) fails only the callers it concerns; a caller whose row is not committed refuses its instance."""

    def __init__(self, transaction: Transaction) -> None:
        self._transaction = transaction
        self._leader = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Job] = []
        self.commits = 0
        self.jobs = 0

    def run(self, work: Callable[[Any], None]) -> None:
        job = _Job(work)
        with self._queue_lock:
            self._queue.append(job)
        with self._leader:
            if not job.done:
                with self._queue_lock:
                    jobs, self._queue = self._queue, []
                try:
                    self._commit(jobs)
                finally:
                    for each in jobs:
                        each.done = True
        if job.error is not None:
            raise job.error

    def _commit(self, jobs: list[_Job]) -> None:
        try:
            with self._transaction() as db:
                for each in jobs:
                    each.work(db)
            self.commits += 1
            self.jobs += len(jobs)
            return
        except Exception as exc:  # noqa: BLE001 - handed to the caller it belongs to, who refuses its instance
            if len(jobs) == 1:
                jobs[0].error = exc
                return
        for each in jobs:  # the batch failed: find out whose row it was
            try:
                with self._transaction() as db:
                    each.work(db)
                self.commits += 1
                self.jobs += 1
            except Exception as exc:  # noqa: BLE001 - as above
                each.error = exc


class DirSync:
    """fsync a directory after a rename into it, shared by concurrent renames into the same directory.

    A rename takes a ticket after it is done; an fsync that started after the ticket was taken covers it. So a
    caller whose ticket is older than the start of the last completed fsync of that directory has nothing to
    do, and one fsync serves every rename that happened before it started."""

    _MAX_DIRS = 4096  # remembered directories; forgetting one only costs a redundant fsync

    def __init__(self, fsync: Callable[[Path], None]) -> None:
        self._fsync = fsync
        self._tickets = itertools.count()
        self._synced: dict[Path, int] = {}
        self._locks = [threading.Lock() for _ in range(64)]
        self.fsyncs = 0

    def after_rename(self, directory: Path) -> None:
        ticket = next(self._tickets)
        with self._locks[hash(directory) % len(self._locks)]:
            if self._synced.get(directory, -1) > ticket:
                return
            start = next(self._tickets)
            self._fsync(directory)
            self.fsyncs += 1
            if len(self._synced) >= self._MAX_DIRS:
                self._synced.clear()
            self._synced[directory] = max(start, self._synced.get(directory, -1))


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or creation inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
