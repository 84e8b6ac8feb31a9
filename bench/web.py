"""Benchmark: the web API's latency while the node ingests and processes, against the same calls on an idle node.

One node (in-process, default config on free loopback ports); an API token; GET /api/requests, /api/status and
/healthz in a loop. Idle first; then while DCMTK storescu pushes a study and the node processes it (NIfTI and
workbook in its worker). Reports p50/p95 per phase and the ratio loaded/idle.

Run from the repository root: .venv/bin/python -m bench.web [--slices 200] [--calls 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.report import report
from node.app import Node
from node.web.auth import Users
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.nodeproc import make_config
from toolkit.peers import storescu

PATHS = ("/api/requests", "/api/status", "/healthz")


def measure(client: httpx.Client, calls: int, stop: threading.Event | None = None) -> list[float]:
    out = []
    for i in range(calls):
        if stop is not None and stop.is_set() and i >= 30:
            break
        started = time.perf_counter()
        r = client.get(PATHS[i % len(PATHS)])
        out.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = StudySpec(series=[SeriesSpec(n_slices=args.slices, rows=256, cols=256, series_number=i + 1,
                                             series_description=f"s{i}") for i in range(3)])
        files = write_study(study, root / "src")
        config = make_config(root / "node", web={"port": 0}, completion={"stable_age_s": 1, "check_interval_s": 0.5})
        Users(config.users_file).set_user("bench", "bench password 1", "viewer")
        token = Users(config.users_file).new_token("bench", "bench")
        node = Node(config)
        node.start()
        try:
            assert node.web is not None
            with httpx.Client(base_url=f"http://127.0.0.1:{node.web.port}", timeout=60,
                              headers={"Authorization": f"Bearer {token}"}) as client:
                measure(client, 20)  # warm-up
                idle = measure(client, args.calls)
                done = threading.Event()

                def push() -> None:
                    storescu("127.0.0.1", config.node.port, "DICOMNODE", files)
                    while node.store.query("SELECT COUNT(*) FROM studies WHERE state='done'")[0][0] < 1:
                        time.sleep(0.1)
                    done.set()

                started = time.monotonic()
                sender = threading.Thread(target=push)
                sender.start()
                loaded: list[float] = []
                while not done.is_set():
                    loaded += measure(client, args.calls, done)
                sender.join()
                busy = time.monotonic() - started
        finally:
            node.stop(drain_timeout=5)
    report(f"idle:   {len(idle)} calls, p50 {pct(idle, 0.5):.1f} ms, p95 {pct(idle, 0.95):.1f} ms")
    report(f"loaded: {len(loaded)} calls during {busy:.1f} s of ingest ({len(files)} instances) and processing, "
           f"p50 {pct(loaded, 0.5):.1f} ms, p95 {pct(loaded, 0.95):.1f} ms, max {max(loaded) * 1000:.0f} ms")
    report(f"ratio loaded/idle: p50 {statistics.median(loaded) / statistics.median(idle):.2f}, "
           f"p95 {pct(loaded, 0.95) / pct(idle, 0.95):.2f}")


if __name__ == "__main__":
    main()
