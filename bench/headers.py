"""Benchmark: header reading on files with large vendor headers, and the conversion it feeds vs dcm2niix.

Real Siemens, Canon and Philips files carry 50-200 KiB of private header (CSA blocks, private sequences)
before the pixel data. This builds a 4D series of such files and times, in the same run:
- the NIfTI header read (read_fast) and the workbook header scan (scan_headers, one worker), per file;
- convert_series against dcm2niix on the same files (ratio).

Run from the repository root: .venv/bin/python -m bench.headers [--frames 40] [--matrix 384] [--private-kib 96] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bench.report import report
from node.process.nifti.convert import NiftiOptions, convert_series
from node.process.nifti.headers import read_fast
from node.process.workbook.scan import scan_headers
from toolkit.dicomgen import SeriesSpec, StudySpec, make_multivolume_series, write_datasets

DCM2NIIX = "/usr/bin/dcm2niix"


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _vendor_header(ds: Dataset, private_kib: int) -> Dataset:
    """A Siemens-style CSA block (two OB elements) and a Philips-style private sequence of many small items."""
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291010, "OB", bytes(private_kib * 512))
    ds.add_new(0x00291020, "OB", bytes(private_kib * 512))
    ds.add_new(0x20050010, "LO", "Philips MR Imaging DD 001")
    items = []
    for k in range(200):
        item = Dataset()
        item.add_new(0x20050010, "LO", "Philips MR Imaging DD 001")
        item.add_new(0x20051000 + (k % 200), "DS", str(k))
        item.add_new(0x20051071, "LO", f"private value {k}")
        items.append(item)
    ds.add_new(0x2005100F, "SQ", Sequence(items))
    return ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=40, help="time points of the 4D series (24 slices each)")
    parser.add_argument("--matrix", type=int, default=384, help="rows and columns of each slice")
    parser.add_argument("--private-kib", type=int, default=96, help="private header bytes per file (KiB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    args = parser.parse_args()
    study = StudySpec(series=[])
    spec = SeriesSpec(n_slices=24, rows=args.matrix, cols=args.matrix, series_description="bold_large_header", series_number=3)
    volumes = [{"AcquisitionNumber": t + 1, "TemporalPositionIdentifier": t + 1} for t in range(args.frames)]
    with tempfile.TemporaryDirectory(prefix="bench-headers-") as tmp:
        work = Path(tmp)
        datasets = [_vendor_header(ds, args.private_kib) for ds in make_multivolume_series(study, spec, volumes)]
        files = write_datasets(datasets, work / "series")
        n = len(files)
        header_kib = (files[0].stat().st_size - args.matrix**2 * 2) / 1024
        report(f"{n} files, about {header_kib:.0f} KiB of header each; best of {args.repeat}")

        def read_all() -> None:
            for f in files:
                assert read_fast(f) is not None, f

        t_fast = _best(read_all, args.repeat)
        t_scan = _best(lambda: scan_headers(files, work / "series", workers=1), args.repeat)
        report(f"NIfTI header read   {t_fast:7.3f} s  {t_fast / n * 1e6:7.1f} us/file")
        report(f"workbook header scan {t_scan:7.3f} s  {t_scan / n * 1e6:7.1f} us/file")

        ref_dir, our_dir = work / "dcm2niix", work / "node"

        def run_ref() -> None:
            shutil.rmtree(ref_dir, ignore_errors=True)
            ref_dir.mkdir()
            subprocess.run([DCM2NIIX, "-z", "n", "-b", "y", "-f", "%s_%d", "-o", str(ref_dir), str(work / "series")],
                           check=True, capture_output=True)

        def run_ours() -> None:
            shutil.rmtree(our_dir, ignore_errors=True)
            outcome = convert_series(files, our_dir / "nifti", NiftiOptions(compress=False))
            assert outcome.error is None and outcome.volumes == 1, outcome

        t_ref = _best(run_ref, args.repeat)
        t_ours = _best(run_ours, args.repeat)
        report(f"convert .nii        dcm2niix {t_ref:7.3f} s  dicom-node {t_ours:7.3f} s  ratio {t_ours / t_ref:5.2f}x")


if __name__ == "__main__":
    main()
