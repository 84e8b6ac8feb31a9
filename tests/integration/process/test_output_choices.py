"""Output choices: MONOCHROME1 kept as dcm2niix keeps it (or inverted on request), NPZ instead of NIfTI per request."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from node.config.model import NiftiOptions
from node.process.processor import StudyJob, run_job
from node.process.qc import QcConfig
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series

DCM2NIIX = "/usr/bin/dcm2niix"


def radiograph_study(tmp_path: Path) -> tuple[StudySpec, Path]:
    spec = StudySpec(series=[SeriesSpec(modality="CR", n_slices=1, rows=40, cols=30, series_description="chest",
                                        extra={"PhotometricInterpretation": "MONOCHROME1"})])
    folder = tmp_path / "store" / spec.study_uid / spec.series[0].series_uid
    folder.mkdir(parents=True)
    for ds in make_series(spec, spec.series[0]):
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return spec, folder


def process(tmp_path: Path, spec: StudySpec, outputs: tuple[str, ...], options: NiftiOptions) -> Path:
    outbox = tmp_path / "outbox"
    outbox.mkdir(exist_ok=True)
    job = StudyJob(spec.study_uid, 1, False, "test", str(tmp_path / "store"), str(outbox), "S", outputs,
                   nifti_options=options, qc=QcConfig.from_section({}))
    result = run_job(job)
    assert result.ok, result.reason
    return outbox / result.folder


def voxels(path: Path) -> np.ndarray:
    image: Any = nib.load(path)
    return np.asarray(image.dataobj)


def dcm2niix(src: Path, out: Path) -> np.ndarray:
    out.mkdir()
    subprocess.run([DCM2NIIX, "-z", "n", "-f", "ref", "-o", str(out), str(src)], check=True, capture_output=True)
    return voxels(out / "ref.nii")


def test_monochrome1_voxels_match_dcm2niix_by_default_and_invert_on_request(tmp_path: Path) -> None:
    spec, src = radiograph_study(tmp_path)
    reference = dcm2niix(src, tmp_path / "ref")
    folder = process(tmp_path, spec, ("nifti",), NiftiOptions(compress=False))
    (nii,) = (folder / "nifti").glob("*.nii")
    ours = voxels(nii)
    assert np.array_equal(ours.reshape(reference.shape), reference)  # stored values, as dcm2niix writes them
    sidecar = json.loads(nii.with_suffix(".json").read_text())
    assert "MonochromeInverted" not in sidecar
    inverted_dir = tmp_path / "inv"
    inverted_dir.mkdir()
    (inverted_dir / "store").symlink_to(tmp_path / "store")
    folder = process(inverted_dir, spec, ("nifti",), NiftiOptions(compress=False, invert_monochrome1=True))
    (nii,) = (folder / "nifti").glob("*.nii")
    inverted = voxels(nii).reshape(reference.shape)
    assert np.array_equal(inverted, reference.max() + reference.min() - reference)
    sidecar = json.loads(nii.with_suffix(".json").read_text())
    assert sidecar["MonochromeInverted"] is True
    assert any("values inverted" in w for w in sidecar["DicomNodeWarnings"])


def test_npz_alone_writes_arrays_and_no_nifti(tmp_path: Path) -> None:
    spec = StudySpec(series=[SeriesSpec(n_slices=8, rows=16, cols=16, series_description="t1")])
    folder = tmp_path / "store" / spec.study_uid / spec.series[0].series_uid
    folder.mkdir(parents=True)
    for ds in make_series(spec, spec.series[0]):
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    out = process(tmp_path, spec, ("npz",), dataclasses.replace(NiftiOptions(), compress=True))
    names = sorted(p.name for p in (out / "nifti").iterdir())
    assert names == ["1_t1.json", "1_t1.npz"], names
    arrays = np.load(out / "nifti" / "1_t1.npz")
    assert arrays["data"].shape == (8, 16, 16) and arrays["affine"].shape == (4, 4)
    assert not (out / "metadata.xlsx").exists()
    assert (out / "previews" / "1_t1.png").exists()
