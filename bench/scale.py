"""Benchmark: processing throughput (studies per minute) on the local pool and on Dask with 1, 2 and 4 workers.

The same studies are pushed (DCMTK storescu) into a fresh node for each executor; the clock runs from the
first study completing to the last one published, so receiving is not measured. The ratio is to the local
pool with the same number of workers; the local pool with 2 workers is the default node.

Run from the repository root: .venv/bin/python -m bench.scale [--studies 20] [--slices 40] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.report import report
from node.app import Node
from node.process import completion
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.nodeproc import make_config
from toolkit.peers import storescu


def run(executor: str, workers: int, files: list[Path], n: int, root: Path) -> float:
    # Completion is held back while the studies arrive; then all are completed at once and the clock starts.
    config = make_config(root, completion={"stable_age_s": 3600, "max_wait_s": 7200, "check_interval_s": 0.1},
                         processing={"executor": executor, "workers": workers, "outputs": ["excel", "nifti"],
                                     "rescan_interval_s": 0.5})
    node = Node(config)
    node.start()
    try:
        storescu("127.0.0.1", config.node.port, "DICOMNODE", files)
        uids = [str(u) for (u,) in node.store.query("SELECT study_uid FROM studies")]
        assert len(uids) == n
        first = time.monotonic()
        for uid in uids:
            completion.mark_complete(node.store, uid, "bench: all studies complete at once")
        while node.store.query("SELECT COUNT(*) FROM studies WHERE state='done'")[0][0] < n:
            time.sleep(0.05)
        return time.monotonic() - first
    finally:
        node.stop(drain_timeout=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp_name:
        tmp = Path(tmp_name)
        files: list[Path] = []
        for i in range(args.studies):
            spec = StudySpec(patient_id=f"SCALE{i:03d}", accession=f"SCALE{i:03d}",
                             series=[SeriesSpec(n_slices=args.slices, rows=args.size, cols=args.size)])
            files += write_study(spec, tmp / "src" / str(i))
        report(f"{args.studies} studies of {args.slices} slices {args.size}x{args.size}, excel + nifti")
        local: dict[int, float] = {}
        for workers in (1, 2, 4):
            seconds = run("local", workers, files, args.studies, tmp / f"local{workers}")
            local[workers] = seconds
            report(f"local pool, {workers} worker(s): {seconds:.1f} s, {args.studies / seconds * 60:.0f} studies/min")
        for workers in (1, 2, 4):
            seconds = run("dask", workers, files, args.studies, tmp / f"dask{workers}")
            report(f"dask LocalCluster, {workers} worker(s): {seconds:.1f} s, {args.studies / seconds * 60:.0f} "
                   f"studies/min, {local[workers] / seconds:.2f}x the local pool with {workers}")


if __name__ == "__main__":
    main()
