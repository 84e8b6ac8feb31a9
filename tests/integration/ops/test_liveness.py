"""Health covers every background part: a stuck inbox turns /healthz red and withholds the systemd watchdog
ping; the status report shows requests that failed or are retrying."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.app import Node, WatchdogPinger
from node.ops import status as status_mod
from node.ops.notify import Notifier
from tests.support.waiting import wait_for
from toolkit.nodeproc import make_config

pytestmark = pytest.mark.integration


def healthz(node: Node) -> tuple[int, dict[str, Any]]:
    assert node.web is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.web.port}/healthz", timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    with tempfile.TemporaryDirectory(prefix="nfy") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        try:
            yield path, sock
        finally:
            sock.close()


def pings(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            if b"WATCHDOG=1" in sock.recv(4096):
                n += 1
        except TimeoutError:
            return n


def test_a_stuck_inbox_turns_healthz_red_and_withholds_the_watchdog_until_it_recovers(
    start_node: Callable[..., Node], notify_socket: tuple[str, socket.socket]
) -> None:
    node = start_node(web={"port": 0}, health={"stall_after_s": 1})
    status, doc = healthz(node)
    assert status == 200, doc
    assert {"scheduler", "inbox", "completion", "processing", "retention"} <= set(doc["checks"])

    path, sock = notify_socket
    pinger = WatchdogPinger(Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}), node.stalled)
    later = iter(time.monotonic() + 3600 * k for k in range(1, 100))  # each tick past the ping interval
    for _ in range(3):
        pinger.tick(next(later))
    assert pings(sock) == 3

    # A pass that never returns (a deadlock, a hung mount): here the inbox's pick-up blocks.
    release = threading.Event()
    original = node.inbox.process_pending

    def stuck(now: float | None = None) -> float:
        release.wait(60)
        return original(now)

    node.inbox.process_pending = stuck  # type: ignore[method-assign]
    try:
        node.inbox.note(node.config.paths.inbox / "x.yaml", renamed=True)  # wakes the inbox loop into the trap
        status, doc = wait_for(lambda: r if (r := healthz(node))[0] == 503 else None, 20, "/healthz to turn red")
        assert doc["checks"]["inbox"]["ok"] is False
        assert "inbox stuck in one pass for" in doc["checks"]["inbox"]["detail"]
        assert doc["checks"]["scheduler"]["ok"] is True
        for _ in range(3):
            pinger.tick(next(later))
        assert pings(sock) == 0 and pinger.withheld
    finally:
        release.set()
        node.inbox.process_pending = original  # type: ignore[method-assign]
    wait_for(lambda: healthz(node)[0] == 200, 20, "/healthz green again")
    pinger.tick(next(later))
    assert pings(sock) == 1 and not pinger.withheld


def test_status_lists_failed_requests_and_studies_waiting_to_retry(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    node = Node(config)
    now = time.time()
    with node.store.transaction() as db:
        for rid, name, state, reason in ((1, "gone", "failed", "C-FIND found no study for accession X9 on pacs"),
                                         (2, "slow", "running", None)):
            db.execute("INSERT INTO requests(id, name, file_name, sha256, peer, outputs, series_filter, state, reason,"
                       " created, updated) VALUES (?, ?, ?, ?, 'pacs', '[]', '{}', ?, ?, ?, ?)",
                       (rid, name, f"{name}.yaml", name, state, reason, now, now))
        db.execute("INSERT INTO request_studies(request_id, study_uid, state, attempts, next_attempt, reason, updated)"
                   " VALUES (2, '1.2.3.4', 'queued', 2, ?, 'attempt 2 of 8 failed: cannot connect; retry at 12:00', ?)",
                   (now + 60, now))
    node.stop()
    lines: list[str] = []
    status_mod.report(config, lines.append, echo_peers=False)
    out = "".join(lines)
    assert "last errors: none" not in out
    assert "request gone failed: C-FIND found no study for accession X9 on pacs" in out
    assert "request slow: study 1.2.3.4 retrying after 2 failed attempt(s): attempt 2 of 8 failed: cannot connect" in out
