"""Benchmark: header scan + metadata workbook for a synthetic 10,000-instance study (wall time, files/s, RSS)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bench.report import report
from node.process.workbook.metadata import build_workbook, load_templates
from node.process.workbook.scan import scan_headers
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series, write_datasets


def _realistic_extras(ds: Dataset) -> None:
    """Make a synthetic header look like a scanner's: private blocks, a CSA-sized blob, code sequences."""
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x08, "CS", "IMAGE NUM 4")
    block.add_new(0x0C, "IS", "1000")
    block.add_new(0x0D, "CS", "DIRECTIONAL")
    csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa.add_new(0x10, "OB", bytes(8_000))
    csa.add_new(0x20, "OB", bytes(40_000))
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-A0100", "SRT", "Brain"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.ReferringPhysicianName = "DOCTOR^REFERRING"
    ds.InstitutionName = "Synthetic Hospital"
    ds.StationName = "MRC12345"
    ds.SoftwareVersions = "syngo MR E11"
    ds.ReceiveCoilName = "Head_32"
    ds.PixelBandwidth = 250.0
    ds.NumberOfAverages = 1.0
    ds.ImagingFrequency = 123.2
    ds.SAR = 0.12
    ds.AcquisitionMatrix = [0, 256, 205, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"


def generate(folder: Path, n_instances: int, n_series: int) -> list[Path]:
    """Write a study in the store layout <study>/<series>/<sop>.dcm; returns the file paths."""
    per_series = n_instances // n_series
    study = StudySpec(series=[])
    files: list[Path] = []
    for i in range(n_series):
        n = per_series if i < n_series - 1 else n_instances - per_series * (n_series - 1)
        spec = SeriesSpec(n_slices=n, rows=16, cols=16, series_number=i + 1, series_description=f"series_{i + 1}")
        datasets = make_series(study, spec)
        for ds in datasets:
            _realistic_extras(ds)
        files += write_datasets(datasets, folder / study.study_uid / spec.series_uid)
    return files


class TreeRss:
    """Samples memory of this process and its descendants (the scan's worker processes) every 250 ms.

    peak_self is this process's RSS; peak_tree sums PSS over the tree, because forkserver workers share
    their imported modules' pages with the server and a sum of RSS would count those pages several times.
    """

    def __init__(self) -> None:
        self.peak_self = 0
        self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.25):
            own = me.memory_info().rss
            tree = me.memory_full_info().pss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                    tree += child.memory_full_info().pss
            self.peak_self = max(self.peak_self, own)
            self.peak_tree = max(self.peak_tree, tree)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--keep", type=Path, help="reuse/keep the generated study in this folder")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-metadata-"))
    folder = args.keep or tmp
    try:
        files = sorted(folder.rglob("*.dcm"))
        if len(files) != args.instances:
            shutil.rmtree(folder, ignore_errors=True)
            t0 = time.perf_counter()
            files = generate(folder, args.instances, args.series)
            report(f"generated {len(files)} files in {time.perf_counter() - t0:.1f} s")
        study_root = files[0].parent.parent
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        report(f"study: {len(files)} instances, {args.series} series, {total_mb:.0f} MB on disk")
        templates = load_templates()
        # The node keeps one forkserver for its lifetime; start it here so the timings below are a study's.
        t0 = time.perf_counter()
        scan_headers(files[:400], study_root, templates=templates, workers=2)
        report(f"forkserver start + 400-file scan (paid once per node process): {time.perf_counter() - t0:.2f} s")
        for workers in args.workers:
            load = os.getloadavg()[0]
            with TreeRss() as rss:
                t0, c0 = time.perf_counter(), time.process_time()
                frame, _ = scan_headers(files, study_root, templates=templates, workers=workers)
                dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            # With workers=1 the CPU time is the scan's own: headers per CPU-second does not depend on load.
            per_cpu = f", {len(frame) / cpu:.0f} headers per CPU-second" if workers == 1 else ""
            report(
                f"scan_headers workers={workers}: {dt:.2f} s, {len(frame) / dt:.0f} headers/s{per_cpu} "
                f"(peak RSS {rss.peak_self / 1e6:.0f} MB, PSS with workers {rss.peak_tree / 1e6:.0f} MB; "
                f"1-min load before: {load:.1f})"
            )
        out = tmp / "metadata.xlsx"
        load = os.getloadavg()[0]
        with TreeRss() as rss:
            t0 = time.perf_counter()
            result = build_workbook(files, study_root, out, workers=None)
            dt = time.perf_counter() - t0
        report(
            f"build_workbook (auto workers): {dt:.2f} s total, {len(files) / dt:.0f} files/s end to end; "
            f"sheets {result.sheets}; workbook {out.stat().st_size / 1e6:.1f} MB; 1-min load before: {load:.1f}"
        )
        report(
            f"peak RSS of this process {rss.peak_self / 1e6:.0f} MB; "
            f"peak PSS with worker processes {rss.peak_tree / 1e6:.0f} MB"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
