"""The completion state machine over a real index, with an injected clock."""

from __future__ import annotations

import json
import time

from node.config import Paths
from node.process import completion
from node.process.completion import CapAction, CompletionConfig, CompletionMonitor
from node.store import state as study_state
from node.store.state import StudyState
from node.store.store import Store


def make_store(tmp_path) -> Store:
    return Store(Paths(tmp_path / "in", tmp_path / "out", tmp_path / "var"))


def add_study(store: Store, uid: str, first: float, last: float, state: str = "receiving") -> None:
    with store.transaction() as db:
        db.execute(
            "INSERT INTO studies(study_uid, first_received, last_received, n_instances, state, state_changed)"
            " VALUES (?,?,?,?,?,?)",
            (uid, first, last, 1, state, first),
        )


def state(store: Store, uid: str) -> tuple:
    return store.query("SELECT state, version, may_be_incomplete FROM studies WHERE study_uid=?", (uid,))[0]


def test_an_idle_study_without_open_associations_completes_and_gets_a_marker(tmp_path):
    store = make_store(tmp_path)
    monitor = CompletionMonitor(store, CompletionConfig(stable_age_s=60, max_wait_s=3600))
    add_study(store, "1.2.3", first=1000, last=1000)
    assert monitor.tick(now=1059) == []
    assert monitor.tick(now=1061) == ["1.2.3"]
    assert state(store, "1.2.3") == ("complete", 1, 0)
    marker = json.loads((completion.ready_dir(store) / "1.2.3.json").read_text())
    assert marker["version"] == 1 and marker["may_be_incomplete"] is False
    assert monitor.tick(now=2000) == []  # decided once


def test_an_open_delivery_or_a_pull_holds_completion(tmp_path):
    store = make_store(tmp_path)
    monitor = CompletionMonitor(store, CompletionConfig(stable_age_s=1, max_wait_s=3600))
    add_study(store, "1.2.3", first=0, last=0)
    add_study(store, "1.2.4", first=0, last=0)
    with store.transaction() as db:
        db.execute("INSERT INTO deliveries(study_uid, assoc_id) VALUES ('1.2.3', 'a1')")
    study_state.claim_pull(store, "1.2.4", "request-1")
    assert monitor.tick(now=100) == []
    store.end_delivery("a1")
    study_state.release_pull(store, "1.2.4", "request-1")
    assert sorted(monitor.tick(now=100)) == ["1.2.3", "1.2.4"]


def test_the_hard_cap_applies_the_configured_action(tmp_path):
    expected = {
        CapAction.WAIT: ("receiving", 0, 0),
        CapAction.DISCARD: ("discarded", 0, 0),
        CapAction.PROCESS: ("complete", 1, 1),
    }
    for action, outcome in expected.items():
        store = make_store(tmp_path / action.value)
        add_study(store, "1.1", first=0, last=990)
        with store.transaction() as db:
            db.execute("INSERT INTO deliveries(study_uid, assoc_id) VALUES ('1.1', 'still-open')")
        CompletionMonitor(store, CompletionConfig(60, 100, action)).tick(now=1000)
        assert state(store, "1.1") == outcome, action


def test_late_instances_reopen_a_done_study_and_the_next_completion_is_version_two(tmp_path):
    store = make_store(tmp_path)
    monitor = CompletionMonitor(store, CompletionConfig(stable_age_s=1, max_wait_s=3600))
    add_study(store, "1.2.3", first=0, last=0)
    monitor.tick(now=10)
    study_state.set_state(store, "1.2.3", StudyState.DONE, "ok", outbox_path="X")
    with store.transaction() as db:
        db.execute("UPDATE studies SET last_received=? WHERE study_uid='1.2.3'", (time.time(),))
    monitor.tick(now=time.time())
    assert state(store, "1.2.3")[0] == "reopened"
    assert monitor.tick(now=time.time() + 5) == ["1.2.3"]
    assert state(store, "1.2.3")[:2] == ("complete", 2)


def test_only_receiving_or_reopened_studies_can_be_marked_complete(tmp_path):
    store = make_store(tmp_path)
    add_study(store, "1.2.3", first=0, last=0, state="processing")
    assert completion.mark_complete(store, "1.2.3", "x") is None
    assert completion.mark_complete(store, "9.9.9", "x") is None


def test_a_study_being_pulled_is_not_cut_short_by_the_hard_cap(tmp_path):
    store = make_store(tmp_path)
    monitor = CompletionMonitor(store, CompletionConfig(stable_age_s=1, max_wait_s=10, on_max_wait=CapAction.PROCESS))
    add_study(store, "1.2.3", first=0, last=0)
    study_state.claim_pull(store, "1.2.3", "request-7")  # e.g. paused overnight by a closed time window
    assert monitor.tick(now=100_000) == []
    assert state(store, "1.2.3")[0] == "receiving"
