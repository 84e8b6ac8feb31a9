"""Benchmark: rendering a request's status file at 1,000 and 10,000 studies (the schema's maximum).

The peer here is the same render at a tenth of the size: a linear render has a ratio near 10, the old
per-study series query made it about 100 (1.1 s at 1,000 studies, 34 s at 10,000). Also reported: how
many reports a burst of 10,000 change events costs once coalesced (RequestChanges).

Run from the repository root: .venv/bin/python -m bench.status [--sizes 1000 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.report import report
from node.config.model import Paths
from node.pull.changes import RequestChanges
from node.pull.inbox import dump_status, status_document
from node.store.store import Store


def build(store: Store, n: int, name: str, series_per_study: int = 4) -> int:
    now = time.time()
    with store.transaction() as db:
        cur = db.execute("INSERT INTO requests(name, file_name, sha256, peer, outputs, series_filter, state, created,"
                         " updated) VALUES (?, ?, ?, 'pacs', '[]', '{}', 'running', ?, ?)",
                         (name, f"{name}.yaml", name, now, now))
        rid = int(cur.lastrowid or 0)
        db.execute("INSERT INTO request_queries(request_id, idx, query, state, next_attempt, found)"
                   " VALUES (?, 0, '{}', 'found', 0, ?)", (rid, n))
        for i in range(n):
            uid = f"1.2.{rid}.{i}"
            db.execute("INSERT INTO request_studies(request_id, query_id, study_uid, accession, state, next_attempt,"
                       " expected, received) VALUES (?, 1, ?, ?, ?, 0, 100, 40)",
                       (rid, uid, f"A{i}", "moving" if i % 3 else "complete"))
            db.execute("INSERT INTO studies(study_uid, first_received, last_received, state, state_changed)"
                       " VALUES (?, ?, ?, 'processing', ?)", (uid, now, now, now))
            for k in range(series_per_study):
                db.execute("INSERT INTO request_series(request_id, study_uid, series_uid, expected, state)"
                           " VALUES (?, ?, ?, 25, 'complete')", (rid, uid, f"{uid}.{k}"))
    return rid


def render_seconds(store: Store, rid: int) -> tuple[float, float]:
    started = time.perf_counter()
    doc = status_document(store, rid)
    built = time.perf_counter()
    assert doc is not None
    dump_status(doc)
    return built - started, time.perf_counter() - built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Store(Paths(root / "inbox", root / "outbox", root / "var"))
        medians: dict[int, float] = {}
        for n in args.sizes:
            rid = build(store, n, f"render{n}")
            runs = [render_seconds(store, rid) for _ in range(args.repeat)]
            query = statistics.median(r[0] for r in runs)
            dump = statistics.median(r[1] for r in runs)
            medians[n] = query + dump
            report(f"status render, {n} studies: {query * 1000:.0f} ms query + {dump * 1000:.0f} ms YAML "
                   f"= {medians[n] * 1000:.0f} ms")
        small, large = min(medians), max(medians)
        if small != large:
            report(f"ratio {large}/{small} studies: {medians[large] / medians[small]:.1f}x time for "
                   f"{large / small:.0f}x studies (linear = {large / small:.0f})")
        rid = build(store, 1000, "burst")
        handled: list[int] = []

        def handle(r: int) -> None:
            handled.append(r)
            render_seconds(store, r)

        changes = RequestChanges(store, handle, ("running",))
        changes.start()
        events = 10000
        started = time.perf_counter()

        def burst() -> None:
            for _ in range(events // 4):
                changes.mark(rid)

        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        marking = time.perf_counter() - started
        changes.stop()
        report(f"{events} change events on a 1,000-study request from 4 threads: {marking * 1000:.0f} ms to mark, "
               f"{len(handled)} reports written")
        store.close()


if __name__ == "__main__":
    main()
