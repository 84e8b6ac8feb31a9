"""Enhanced multi-frame MR (Siemens XA, Philips, Canon): per-frame facts come from the functional groups.

The truth is the classic (one file per image) series of the same geometry, which matches dcm2niix voxel for
voxel (test_nifti_vs_dcm2niix.py), and the values written into the generated functional groups. Debian's
dcm2niix is not the oracle here: it stacks these generated enhanced files' frames as slices of one 3D volume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from node.process.nifti.convert import NiftiOptions, convert_series
from toolkit.dicomgen import SeriesSpec, StudySpec, make_enhanced_mr, make_series, write_datasets

STUDY = StudySpec(series=[])


def convert(ds: Any, root: Path) -> tuple[Any, dict[str, Any]]:
    folder = root / "enhanced"
    folder.mkdir(parents=True)
    path = folder / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    outcome = convert_series([path], folder / "out" / "nifti", NiftiOptions(compress=False))
    assert outcome.error is None, outcome
    images = {f.removeprefix("nifti/").removesuffix(".nii"): nib.load(folder / "out" / f)
              for f in outcome.files if f.endswith(".nii")}
    sidecars = {f.removeprefix("nifti/").removesuffix(".json"): json.loads((folder / "out" / f).read_text())
                for f in outcome.files if f.endswith(".json")}
    return images, sidecars


def classic_affine(spec: SeriesSpec, tmp: Path) -> np.ndarray:
    files = write_datasets(make_series(STUDY, spec), tmp / "classic")
    outcome = convert_series(files, tmp / "classic_out" / "nifti", NiftiOptions(compress=False))
    return np.asarray(nib.load(tmp / "classic_out" / outcome.files[0]).affine)  # type: ignore[attr-defined]


def test_a_bold_run_takes_tr_from_the_shared_groups_for_pixdim4_and_the_sidecar(tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=4, rows=8, cols=10, series_description="bold")
    frames = [{"slice": k, "temporal": t + 1} for t in range(3) for k in range(4)]
    images, sidecars = convert(make_enhanced_mr(STUDY, spec, frames, shared={"RepetitionTime": 1230.0,
                                                                              "FlipAngle": 70.0}), tmp_path)
    (name,) = images
    assert images[name].shape == (10, 8, 4, 3)
    assert images[name].header.get_zooms()[3] == np.float32(1.23)  # was a 1.0 s placeholder
    assert sidecars[name]["RepetitionTime"] == 1.23 and sidecars[name]["FlipAngle"] == 70.0
    np.testing.assert_allclose(images[name].affine, classic_affine(spec, tmp_path), atol=1e-4)


def test_echoes_of_one_enhanced_file_are_split_into_e1_and_e2_with_their_echo_times(tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=4, rows=8, cols=10, series_description="me", series_number=2)
    frames = [{"slice": k, "echo_time": te} for te in (5.0, 10.0) for k in range(4)]
    images, sidecars = convert(make_enhanced_mr(STUDY, spec, frames), tmp_path)
    assert sorted(images) == ["2_me_e1", "2_me_e2"]
    assert sidecars["2_me_e1"]["EchoTime"] == 0.005 and sidecars["2_me_e2"]["EchoTime"] == 0.01
    assert all(img.shape == (10, 8, 4) for img in images.values())


def test_magnitude_and_phase_frames_are_split_by_their_frame_type(tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=4, rows=8, cols=10, series_description="mp", series_number=3)
    frames = [{"slice": k, "frame_type": ["ORIGINAL", "PRIMARY", kind, "NONE"], "temporal": i + 1}
              for i, kind in enumerate(("M", "P")) for k in range(4)]
    images, _ = convert(make_enhanced_mr(STUDY, spec, frames), tmp_path)
    assert sorted(images) == ["3_mp", "3_mp_ph"]
    magnitude, phase = images["3_mp"].get_fdata(), images["3_mp_ph"].get_fdata()
    assert magnitude.shape == phase.shape == (10, 8, 4) and not np.array_equal(magnitude, phase)


def test_a_philips_private_per_frame_position_does_not_move_the_origin(tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=4, rows=8, cols=10, series_description="ph", series_number=4)
    ds = make_enhanced_mr(STUDY, spec, [{"slice": k} for k in range(4)], philips_private_offset=0.45)
    ds.Manufacturer = "Philips Medical Systems"
    images, _ = convert(ds, tmp_path)
    (name,) = images
    np.testing.assert_allclose(images[name].affine, classic_affine(spec, tmp_path), atol=1e-4)
