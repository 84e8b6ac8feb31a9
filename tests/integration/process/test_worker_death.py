"""A worker that dies (killed, out of memory) never stops processing: the pool is rebuilt, the study is tried
again up to processing.max_attempts and then fails with the reason, and the next study is processed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from node.app import Node
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.peers import storescu

pytestmark = pytest.mark.integration


def _pool_workers() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_study_whose_worker_keeps_dying_fails_with_the_reason_and_the_next_study_is_processed(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node(completion={"stable_age_s": 0.5, "check_interval_s": 0.1},
                      processing={"max_attempts": 2, "rescan_interval_s": 0.5})
    doomed = StudySpec(series=[SeriesSpec(n_slices=200, rows=256, cols=256)])
    storescu("127.0.0.1", node.config.node.port, "DICOMNODE", write_study(doomed, tmp_path / "doomed"))

    stop = threading.Event()
    kills = []

    def killer() -> None:
        while not stop.wait(0.01):
            study = node.store.study(doomed.study_uid)
            if study and study["state"] == "processing":
                for proc in _pool_workers():
                    try:
                        proc.kill()
                        kills.append(proc.pid)
                    except psutil.Error:
                        continue

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        study = wait_for(lambda: (s := node.store.study(doomed.study_uid)) and s["state"] == "failed" and s,
                     timeout=180, what="the doomed study to fail")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert kills
    assert "died 2 time(s)" in study["reason"] and "max_attempts=2" in study["reason"]
    assert study["attempts"] == 2

    fine = StudySpec(series=[SeriesSpec(n_slices=5)])
    storescu("127.0.0.1", node.config.node.port, "DICOMNODE", write_study(fine, tmp_path / "fine"))
    wait_for(lambda: (s := node.store.study(fine.study_uid)) and s["state"] == "done", timeout=180,
          what="the next study processed by the rebuilt pool")
    assert node.processor.wedged is None
