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


def test_a_pass_stuck_past_the_stall_limit_makes_the_loop_unhealthy_until_it_returns() -> None:
    release, entered = threading.Event(), threading.Event()

    def step() -> float:
        entered.set()
        release.wait(30)
        return 3600.0

    loop = Loop("test-stuck", step, lambda: 3600.0, logging.getLogger("tests.loop"))
    assert loop.health(0.2) == (False, "test-stuck not running")
    loop.start()
    try:
        assert entered.wait(10)
        _, detail = wait_for(lambda: h if not (h := loop.health(0.2))[0] else None, 10, "the stall to be seen")
        assert "test-stuck stuck in one pass for" in detail
        release.set()
        wait_for(lambda: loop.health(0.2)[0], 10, "health back once the pass returned")
        assert "last pass" in loop.health(0.2)[1]
    finally:
        release.set()
        loop.stop(timeout=10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_loop_whose_thread_died_is_unhealthy() -> None:
    def step() -> float:
        raise SystemExit("a BaseException ends the thread")  # not caught by the loop: the thread dies

    loop = Loop("test-dead", step, lambda: 0.05, logging.getLogger("tests.loop"))
    loop.start()
    wait_for(lambda: not loop.health(60)[0], 10, "the dead thread to be seen")
    assert loop.health(60) == (False, "test-dead thread died")


def test_a_loop_whose_passes_keep_failing_stays_alive_and_says_so() -> None:
    def step() -> float:
        raise RuntimeError("broken")

    loop = Loop("test-failing", step, lambda: 0.05, logging.getLogger("tests.failing"))
    logging.getLogger("tests.failing").disabled = True
    loop.start()
    try:
        wait_for(lambda: loop.failures >= 2, 10, "failed passes")
        ok, detail = loop.health(60)
        assert ok and "pass(es) failed (see the log)" in detail
    finally:
        loop.stop(timeout=10)
        logging.getLogger("tests.failing").disabled = False
