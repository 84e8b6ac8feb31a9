"""Background work in one shape: a Loop thread that repeats a pass until stopped, and folder observers.

Watchdog events are the fast path that wakes a loop; every loop also runs on its own interval, since events
can be missed.
"""

from __future__ import annotations

import logging
import threading
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

    def _run(self) -> None:
        wait = self._interval() if self._first_wait else 0.0
        while not self.stopping.is_set():
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                if self.stopping.is_set():
                    return
            try:
                next_wait = self._step()
            except Exception:  # noqa: BLE001 - logged below with its traceback; one bad pass must not end the loop
                self._log.exception("%s pass failed; retrying", self.name)
                next_wait = None
            wait = self._interval() if next_wait is None else max(0.05, next_wait)
