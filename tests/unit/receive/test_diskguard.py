"""The disk guard trips above the high-water mark and releases only below the low-water mark."""

from __future__ import annotations

from pathlib import Path

from node.receive.diskguard import DiskGuard


def test_the_guard_trips_high_and_releases_low_with_hysteresis():
    usage = {"used": 50}

    def fake(_path: Path) -> tuple[int, int, int]:
        return 100, usage["used"], 100 - usage["used"]

    guard = DiskGuard(Path("."), high_pct=95, low_pct=90, interval_s=0, usage=fake)
    assert not guard.tripped()
    usage["used"] = 96
    assert guard.tripped()
    usage["used"] = 92  # between the marks: stays tripped
    assert guard.tripped()
    usage["used"] = 89
    assert not guard.tripped()
    assert guard.free_bytes == 11


def test_the_guard_reads_real_disk_usage_by_default(tmp_path):
    guard = DiskGuard(tmp_path, high_pct=100, low_pct=99, interval_s=0)
    assert not guard.tripped()
    assert 0 < guard.used_pct < 100
    assert guard.free_bytes > 0
