"""Watchdog observers on one folder: the fast path; every user of them also rescans, since events can be missed."""

from __future__ import annotations

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
