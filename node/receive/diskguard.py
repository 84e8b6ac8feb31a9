"""Disk-usage guard with hysteresis: trips above the high-water mark, releases below the low-water mark."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

UsageFn = Callable[[Path], tuple[int, int, int]]


class DiskGuard:
    """Answers `tripped()` cheaply from many threads; re-reads disk usage at most every `interval_s`."""

    def __init__(
        self,
        path: Path,
        high_pct: float,
        low_pct: float,
        interval_s: float = 2.0,
        usage: UsageFn | None = None,
    ) -> None:
        self.path = path
        self.high_pct = high_pct
        self.low_pct = low_pct
        self.interval_s = interval_s
        self._usage: UsageFn = usage or (lambda p: tuple(shutil.disk_usage(p)))  # type: ignore[assignment,return-value]
        self._lock = threading.Lock()
        self._tripped = False
        self._checked = 0.0
        self.used_pct = 0.0
        self.free_bytes = 0

    def configure(self, high_pct: float, low_pct: float, interval_s: float) -> None:
        with self._lock:
            self.high_pct, self.low_pct, self.interval_s = high_pct, low_pct, interval_s
            self._checked = 0.0

    def tripped(self, fresh: bool = False) -> bool:
        """Above the high-water mark (and not yet back below the low one); fresh: re-read usage now."""
        now = time.monotonic()
        with self._lock:
            if fresh or now - self._checked >= self.interval_s:
                self._checked = now
                self._refresh()
            return self._tripped

    def _refresh(self) -> None:
        total, used, free = self._usage(self.path)
        self.free_bytes = free
        self.used_pct = 100.0 * used / total if total else 100.0
        if not self._tripped and self.used_pct >= self.high_pct:
            self._tripped = True
            log.error(
                "DISK GUARD TRIPPED: %s is %.1f%% used (high-water %.1f%%); C-STORE now answers 0xA700 until "
                "usage falls below %.1f%%",
                self.path,
                self.used_pct,
                self.high_pct,
                self.low_pct,
            )
        elif self._tripped and self.used_pct < self.low_pct:
            self._tripped = False
            log.warning("Disk guard released: %s is %.1f%% used (low-water %.1f%%)", self.path, self.used_pct, self.low_pct)
