"""Benchmark: dicom-node NIfTI conversion vs dcm2niix on the same large series (wall time, best of N runs).

Run from the repository root: .venv/bin/python -m bench.convert [--slices 500] [--frames 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.report import report
from node.process.nifti.convert import NiftiOptions, convert_series
from toolkit.dicomgen import SeriesSpec, StudySpec, make_multivolume_series, make_series, write_datasets

DCM2NIIX = "/usr/bin/dcm2niix"


def _nii(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image), path
    return img


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _ct_pixels(rows: int, cols: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    return rng.integers(0, 3000, size=(rows, cols), dtype=np.uint16)


def bench_case(name: str, files: list[Path], work: Path, repeat: int, compress: bool) -> None:
    ref_dir, our_dir = work / f"{name}_dcm2niix", work / f"{name}_node" / "nifti"

    def run_ref() -> None:
        shutil.rmtree(ref_dir, ignore_errors=True)
        ref_dir.mkdir(parents=True)
        subprocess.run([DCM2NIIX, "-z", "y" if compress else "n", "-b", "y", "-f", "%s_%d", "-o", str(ref_dir),
                        str(files[0].parent)], check=True, capture_output=True)

    def run_ours() -> None:
        shutil.rmtree(our_dir.parent, ignore_errors=True)
        outcome = convert_series(files, our_dir, NiftiOptions(compress=compress))
        assert outcome.error is None and outcome.volumes == 1, outcome

    t_ref = _best(run_ref, repeat)
    t_ours = _best(run_ours, repeat)
    ext = "*.nii.gz" if compress else "*.nii"
    a = _nii(next(ref_dir.glob(ext)))
    b = _nii(next(our_dir.glob(ext)))
    same = a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)
    report(f"{name:<28} {len(files):>6} files  shape {b.shape!s:<20} dcm2niix {t_ref:7.3f} s  "
          f"dicom-node {t_ours:7.3f} s  ratio {t_ours / t_ref:5.2f}x  {'same geometry' if same else 'DIFFERENT'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=500, help="CT slices (512x512)")
    parser.add_argument("--frames", type=int, default=100, help="4D MR time points (64x64x30)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the best is reported")
    args = parser.parse_args()
    study = StudySpec(series=[])
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        work = Path(tmp)
        ct = SeriesSpec(modality="CT", n_slices=args.slices, rows=512, cols=512, slice_spacing=1.0,
                        pixel_spacing=(0.7, 0.7), series_description="ct_bench", pixel_fn=_ct_pixels)
        ct_files = write_datasets(make_series(study, ct), work / "ct")
        mr = SeriesSpec(n_slices=30, rows=64, cols=64, series_description="bold_bench", series_number=2)
        volumes = [{"AcquisitionNumber": t + 1, "TemporalPositionIdentifier": t + 1} for t in range(args.frames)]
        mr_files = write_datasets(make_multivolume_series(study, mr, volumes), work / "mr4d")
        report(f"dcm2niix {DCM2NIIX}; best of {args.repeat}; target ratio <= 1.5x")
        for compress in (False, True):
            tag = ".nii.gz" if compress else ".nii"
            bench_case(f"CT {args.slices} slices {tag}", ct_files, work, args.repeat, compress)
            bench_case(f"MR 4D {args.frames} vols {tag}", mr_files, work, args.repeat, compress)


if __name__ == "__main__":
    main()
