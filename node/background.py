"""Background work in one shape: a Loop thread that repeats a pass until stopped, and folder observers.

Watchdog events are the fast path that wakes a loop; every loop also runs on its own interval, since events
can be missed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer


def start_observer(folder: Path, handler: FileSystemEventHandler) -> Any:
    """Watch folder (not recursively) in a daemon thread; returns the observer to pass to stop_observer."""
    observer = Observer()
    observer.schedule(handler, str(folder), recursive=False)
    observer.daemon = True
    observer.start()
    return observer


def stop_observer(observer: Any, timeout: float = 10.0) -> None:
    if observer is not None:
        observer.stop()
        observer.join(timeout=timeout)


class Loop:
    """A named daemon thread that runs `step` again and again until stopped.

    step returns how long to wait before the next pass (None: `interval()`); wake() cuts a wait short.
    A pass that raises is logged with its traceback on the owner's logger and retried after `interval()`,
    so one bad pass never ends the loop. `first_wait` waits one interval before the first pass.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], float | None],
        interval: Callable[[], float],
        logger: logging.Logger,
        first_wait: bool = False,
    ) -> None:
        self.name = name
        self._step = step
        self._interval = interval
        self._log = logger
        self._first_wait = first_wait
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pass_started: float | None = None  # monotonic start of the pass under way, None between passes
        self._last_pass: float | None = None  # monotonic end of the last pass
        self.failures = 0  # passes that raised since the last one that did not

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def health(self, stall_after_s: float) -> tuple[bool, str]:
        """(ok, detail) for /healthz and the systemd watchdog: the thread runs and no pass is stuck.

        A pass running longer than stall_after_s is stuck (a deadlock, a hung mount); one that keeps raising
        is reported but stays healthy (it is retried, and its cause is in the log)."""
        thread = self._thread
        if thread is None:
            return False, f"{self.name} not running"
        if not thread.is_alive():
            return False, f"{self.name} thread died"
        started = self._pass_started
        if started is not None and time.monotonic() - started > stall_after_s:
            return False, f"{self.name} stuck in one pass for {time.monotonic() - started:.0f} s"
        last = self._last_pass
        since = f"last pass {time.monotonic() - last:.0f} s ago" if last is not None else "first pass under way"
        failing = f", last {self.failures} pass(es) failed (see the log)" if self.failures else ""
        return True, f"{self.name} alive, {since}{failing}"

    def _run(self) -> None:
        wait = self._interval() if self._first_wait else 0.0
        while not self.stopping.is_set():
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                if self.stopping.is_set():
                    return
            self._pass_started = time.monotonic()
            try:
                next_wait = self._step()
                self.failures = 0
            except Exception:  # noqa: BLE001 - logged below with its traceback; one bad pass must not end the loop
                self._log.exception("%s pass failed; retrying", self.name)
                self.failures += 1
                next_wait = None
            finally:
                self._last_pass = time.monotonic()
                self._pass_started = None
            wait = self._interval() if next_wait is None else max(0.05, next_wait)
