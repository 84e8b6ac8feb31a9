"""Where study jobs run: the local process pool (default) or a Dask distributed cluster.

Both are driven the same way by the Processor (submit a StudyJob, get a concurrent.futures.Future), so the
claim, publish and exactly-once logic stays one code path. With Dask the job runs on whichever worker the
scheduler picks: the store and the outbox must be on a file system every worker sees at the same path.
A worker lost mid-task makes Dask run the task again elsewhere (its allowed-failures budget); run_job
publishes a version only once, so a rerun after a publish is a no-op.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class DaskPool:
    """The subset of ProcessPoolExecutor the Processor uses, on dask.distributed.

    scheduler: the address of an existing cluster's scheduler (tcp://host:8786), or None to start a
    LocalCluster of `workers` single-threaded worker processes on loopback (no dashboard)."""

    def __init__(self, scheduler: str | None, workers: int) -> None:
        from dask.distributed import Client, LocalCluster

        self.cluster: Any = None
        if scheduler:
            self.client = Client(scheduler, timeout=30)
            where = scheduler
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address=None, silence_logs=logging.WARNING)
            self.client = Client(self.cluster)
            where = f"a LocalCluster of {workers} worker process(es)"
        self._lock = threading.Lock()
        self._tasks: dict[cf.Future[Any], Any] = {}
        log.info("Processing on Dask: %s", where)

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        result: cf.Future[Any] = cf.Future()
        result.set_running_or_notify_cancel()
        # pure=False and a unique key: two versions (or a retry) of one study are never merged by Dask.
        task = self.client.submit(fn, *args, pure=False, key=f"study-job-{uuid.uuid4().hex}")
        with self._lock:
            self._tasks[result] = task

        def done(finished: Any) -> None:
            with self._lock:
                self._tasks.pop(result, None)
            try:
                result.set_result(finished.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the Processor's callback as the job's outcome
                if not result.done():
                    result.set_exception(exc)

        task.add_done_callback(done)
        return result

    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            tasks = list(self._tasks.values())
        if cancel_futures and tasks:
            self.client.cancel(tasks)
        if not wait:
            return
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
