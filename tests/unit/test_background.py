"""The one background loop: passes repeat, a failing pass is logged and retried, wake() cuts a wait short."""

from __future__ import annotations

import logging
import threading

import pytest

from node.background import Loop
from tests.support.waiting import wait_for


def test_a_failing_pass_is_logged_with_its_traceback_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def step() -> float:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first pass breaks")
        return 0.05

    loop = Loop("test-loop", step, lambda: 0.05, logging.getLogger("tests.loop"))
    with caplog.at_level(logging.ERROR, logger="tests.loop"):
        loop.start()
        try:
            wait_for(lambda: len(calls) >= 3, timeout=10, what="passes after the failure")
        finally:
            loop.stop()
    failures = [r for r in caplog.records if "test-loop pass failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_wake_runs_the_next_pass_without_waiting_out_the_interval() -> None:
    passes = threading.Semaphore(0)
    loop = Loop("test-wake", lambda: passes.release(), lambda: 3600.0, logging.getLogger("tests.loop"))
    loop.start()
    try:
        assert passes.acquire(timeout=10)  # the first pass runs at once
        loop.wake()
        assert passes.acquire(timeout=10)  # and the wake brings the second one, not the hour
    finally:
        loop.stop(timeout=10)


def test_first_wait_delays_the_first_pass_and_stop_ends_the_thread() -> None:
    ran = threading.Event()
    loop = Loop("test-first", lambda: ran.set(), lambda: 3600.0, logging.getLogger("tests.loop"), first_wait=True)
    loop.start()
    assert not ran.wait(0.3)
    loop.stop(timeout=10)
    assert not ran.is_set()
    assert not any(t.name == "test-first" for t in threading.enumerate())
