"""Benchmark: a study's processing time with previews and QC on, against the same job with them off.

The job is the worker's own (node.process.processor.run_job) on generated studies laid out as the store keeps
them: a CT of thin slices, an MR study of five series and a set of radiographs, with noisy body-like pixels.
Each configuration runs --repeat times, interleaved; the median is reported with the ratio on/off (the issue's
bound: 1.15).

Run from the repository root: .venv/bin/python -m bench.outputs [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import report
from node.process.processor import StudyJob, run_job
from node.process.qc import QcConfig
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series


def anatomy(rows: int, cols: int, index: int) -> np.ndarray:
    """A body-like slice with 12-bit noise: real images do not compress like the test generator's ramps, and the
    NIfTI step's gzip cost (the denominator of the ratio) depends on it."""
    rng = np.random.default_rng(index)
    r, c = np.mgrid[0:rows, 0:cols]
    body = ((r - rows / 2) / (rows * 0.42)) ** 2 + ((c - cols / 2) / (cols * 0.38)) ** 2 < 1
    return np.where(body, rng.normal(1200, 150, (rows, cols)), rng.normal(40, 12, (rows, cols))).clip(0, 4095).astype(
        np.uint16)


def studies() -> dict[str, StudySpec]:
    mr = [SeriesSpec(n_slices=40, rows=256, cols=256, series_number=i + 1, series_description=f"mr{i}", orientation=o,
                     pixel_fn=anatomy) for i, o in enumerate(["AX", "SAG", "COR", "AX", "AX"])]
    return {
        "CT 200 slices 512x512": StudySpec(series=[SeriesSpec(modality="CT", n_slices=200, rows=512, cols=512,
                                                              slice_spacing=1.0, series_description="ct_thin",
                                                              pixel_fn=anatomy)]),
        "MR 5 series x 40 slices 256x256": StudySpec(series=mr),
        "DX 4 radiographs 2048x2048": StudySpec(series=[
            SeriesSpec(modality="DX", n_slices=1, rows=2048, cols=2048, series_number=i + 1,
                       series_description=f"dx{i}", pixel_fn=anatomy) for i in range(4)]),
    }


def lay_out(study: StudySpec, store: Path) -> None:
    for spec in study.series:
        folder = store / study.study_uid / spec.series_uid
        folder.mkdir(parents=True)
        for ds in make_series(study, spec):
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


def once(study: StudySpec, store: Path, outbox: Path, qc: QcConfig) -> float:
    shutil.rmtree(outbox, ignore_errors=True)
    outbox.mkdir()
    job = StudyJob(study.study_uid, 1, False, "bench", str(store), str(outbox), "S", ("excel", "nifti"), qc=qc)
    started = time.perf_counter()
    result = run_job(job)
    seconds = time.perf_counter() - started
    assert result.ok, result.reason
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--examples", type=Path, help="also copy one study's previews and qc_report.html here")
    args = parser.parse_args()
    on = QcConfig.from_section({})
    off = QcConfig.from_section({"enabled": False, "previews": False})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, study in studies().items():
            store = root / name.split()[0] / "store"
            lay_out(study, store)
            once(study, store, root / "warm", off)  # page cache and imports, not measured
            times: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(args.repeat):
                times["off"].append(once(study, store, root / "out", off))
                times["on"].append(once(study, store, root / "out", on))
            if args.examples:
                once(study, store, root / "out", on)
                args.examples.mkdir(parents=True, exist_ok=True)
                for png in sorted((root / "out" / "S" / "previews").glob("*.png"))[:1]:
                    shutil.copy2(png, args.examples / f"preview-{name.split()[0].lower()}.png")
            off_s, on_s = statistics.median(times["off"]), statistics.median(times["on"])
            report(f"{name}: previews+QC off {off_s:.2f} s, on {on_s:.2f} s, ratio {on_s / off_s:.2f} "
                   f"(median of {args.repeat})")


if __name__ == "__main__":
    main()
