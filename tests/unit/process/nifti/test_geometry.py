"""NIfTI geometry, ordering, scaling and options, checked against the DICOM geometry itself (no peer needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from node.process.nifti.convert import NiftiOptions, convert_series, convert_study
from toolkit.dicomgen import (
    SeriesSpec,
    StudySpec,
    make_multivolume_series,
    make_series,
    oblique_iop,
    write_datasets,
)

STUDY = StudySpec(series=[])
PLAIN = NiftiOptions(compress=False)


def _nii(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image), path
    return img


def _testfile(name: str) -> Path:
    found = get_testdata_file(name)
    assert isinstance(found, str), f"{name} is not shipped with pydicom"
    return Path(found)


def _convert(datasets: list, tmp_path: Path, options: NiftiOptions = PLAIN):
    files = write_datasets(datasets, tmp_path / "in")
    return convert_series(files, tmp_path / "study" / "nifti", options), tmp_path / "study"


def _lps_to_ras(p) -> np.ndarray:
    return np.asarray(p, dtype=float) * np.array([-1.0, -1.0, 1.0])


@pytest.mark.parametrize(
    ("orientation", "position"),
    [("AX", "HFS"), ("AX", "FFS"), ("AX", "HFP"), ("SAG", "HFS"), ("COR", "FFP"), ("AX", "HFDL"),
     (oblique_iop(23, "x"), "HFS"), (oblique_iop(-17, "y"), "FFDR"), (oblique_iop(40, "z"), "HFS")],
)
def test_every_voxel_lands_where_the_dicom_says_in_ras(tmp_path: Path, orientation, position: str) -> None:
    spec = SeriesSpec(n_slices=7, rows=20, cols=24, orientation=orientation, patient_position=position,
                      shuffle_instance_numbers=True)
    datasets = make_series(STUDY, spec)
    outcome, root = _convert(datasets, tmp_path)
    img = _nii(root / outcome.files[0])
    assert img.header["qform_code"] > 0 and img.header["sform_code"] > 0
    np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
    data = img.get_fdata()
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    dy, dx = (float(v) for v in datasets[0].PixelSpacing)
    for ds in datasets:
        # DICOM pixel (r, c) of this slice sits at IPP + c*dx*row + r*dy*col (LPS).
        r, c = 5, 9
        world = _lps_to_ras(np.asarray(ds.ImagePositionPatient, dtype=float) + c * dx * iop[:3] + r * dy * iop[3:])
        ijk = np.linalg.solve(img.affine, np.append(world, 1.0))[:3]
        idx = np.round(ijk).astype(int)
        np.testing.assert_allclose(ijk, idx, atol=1e-3)
        assert data[tuple(idx)] == ds.pixel_array[r, c]


def test_an_axial_hfs_volume_reads_las_like_dcm2niix_does(tmp_path: Path) -> None:
    outcome, root = _convert(make_series(STUDY, SeriesSpec()), tmp_path)
    assert nib.aff2axcodes(_nii(root / outcome.files[0]).affine) == ("L", "A", "S")


def test_shuffled_instance_numbers_do_not_change_the_volume(tmp_path: Path) -> None:
    ordered, root_a = _convert(make_series(STUDY, SeriesSpec(series_uid="1.2.3.1")), tmp_path / "a")
    shuffled, root_b = _convert(make_series(STUDY, SeriesSpec(series_uid="1.2.3.1", shuffle_instance_numbers=True)),
                                tmp_path / "b")
    a, b = _nii(root_a / ordered.files[0]), _nii(root_b / shuffled.files[0])
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())


def test_a_4d_series_is_ordered_by_temporal_position_not_instance_number(tmp_path: Path) -> None:
    volumes = [{"TemporalPositionIdentifier": t + 1, "AcquisitionNumber": t + 1} for t in range(5)]
    spec = SeriesSpec(n_slices=6, series_description="bold", shuffle_instance_numbers=True)
    outcome, root = _convert(make_multivolume_series(STUDY, spec, volumes), tmp_path)
    img = _nii(root / outcome.files[0])
    assert img.shape == (32, 32, 6, 5)
    data = img.get_fdata()
    # make_multivolume_series offsets volume t by 37*t: the time course at one voxel must rise by 37.
    np.testing.assert_array_equal(np.diff(data[3, 4, 2, :]), [37.0] * 4)
    assert img.header.get_zooms()[3] == pytest.approx(0.6)


def test_two_echoes_in_one_series_become_two_files_named_by_echo(tmp_path: Path) -> None:
    spec = SeriesSpec(series_number=6, series_description="t2_me")
    datasets = make_multivolume_series(STUDY, spec, [{"EchoNumbers": 1, "EchoTime": 10.0},
                                                     {"EchoNumbers": 2, "EchoTime": 30.0}])
    outcome, root = _convert(datasets, tmp_path)
    assert [f for f in outcome.files if f.endswith(".nii")] == ["nifti/6_t2_me_e1.nii", "nifti/6_t2_me_e2.nii"]
    assert outcome.details["splits"] == ["SPLIT_ECHO: echo number / echo time differs (2 values)"]
    meta = json.loads((root / "nifti" / "6_t2_me_e2.json").read_text())
    assert meta["EchoTime"] == pytest.approx(0.030)
    assert meta["EchoNumber"] == 2


def test_phase_images_get_the_ph_suffix(tmp_path: Path) -> None:
    spec = SeriesSpec(series_number=9, series_description="swi")
    datasets = make_multivolume_series(STUDY, spec, [{"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]},
                                                     {"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}])
    outcome, _ = _convert(datasets, tmp_path)
    assert [f for f in outcome.files if f.endswith(".nii")] == ["nifti/9_swi.nii", "nifti/9_swi_ph.nii"]


def test_dwi_bvals_and_bvecs_follow_the_fsl_voxel_convention(tmp_path: Path) -> None:
    vecs = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
    volumes = [{"AcquisitionNumber": i + 1, "DiffusionBValue": 0.0 if i == 0 else 1000.0,
                "DiffusionGradientOrientation": list(v)} for i, v in enumerate(vecs)]
    spec = SeriesSpec(series_number=4, series_description="dwi", orientation="SAG")
    outcome, root = _convert(make_multivolume_series(STUDY, spec, volumes), tmp_path)
    assert "nifti/4_dwi.bval" in outcome.files
    assert (root / "nifti" / "4_dwi.bval").read_text().split() == ["0", "1000", "1000", "1000"]
    bvec = np.loadtxt(root / "nifti" / "4_dwi.bvec")
    # Sagittal: voxel i runs along patient y (A->P), j up, k along -x; gradients map accordingly.
    np.testing.assert_allclose(bvec, [[0, 0, 1, 0], [0, 0, 0, 1], [0, -1, 0, 0]], atol=1e-6)


def test_gantry_tilt_is_flagged_and_written_as_acquired_with_an_exact_sform(tmp_path: Path) -> None:
    angle = 20.0
    spec = SeriesSpec(modality="CT", n_slices=10, orientation=oblique_iop(angle, "x"), slice_spacing=2.5,
                      extra={"GantryDetectorTilt": angle,
                             "ImagePositionPatient": lambda k: [-100.0, -120.0, -40.0 + 2.5 * k]})
    datasets = make_series(STUDY, spec)
    outcome, root = _convert(datasets, tmp_path, NiftiOptions())  # compressed: the sform patch must survive gzip
    assert outcome.files[0].endswith(".nii.gz")
    assert any(w.startswith("GANTRY_TILT: slices sheared by 20.00 degrees") for w in outcome.warnings)
    img = _nii(root / outcome.files[0])
    assert img.shape == (32, 32, 10)
    for k, ds in enumerate(datasets):
        first_row_corner = img.affine @ [0, 31, k, 1]
        np.testing.assert_allclose(first_row_corner[:3], _lps_to_ras(ds.ImagePositionPatient), atol=1e-3)
    meta = json.loads((root / outcome.files[1]).read_text())
    assert meta["GantryDetectorTilt"] == 20
    assert meta["GantryTiltSheared"] == pytest.approx(20.0)


def test_gantry_tilt_can_be_resampled_onto_an_orthogonal_grid(tmp_path: Path) -> None:
    spec = SeriesSpec(modality="CT", n_slices=10, orientation=oblique_iop(20.0, "x"), slice_spacing=2.5,
                      extra={"GantryDetectorTilt": 20.0,
                             "ImagePositionPatient": lambda k: [-100.0, -120.0, -40.0 + 2.5 * k]})
    outcome, root = _convert(make_series(STUDY, spec), tmp_path, NiftiOptions(compress=False, resample_tilt=True))
    assert "TILT_RESAMPLED" in {w.split(":")[0] for w in outcome.warnings}
    img = _nii(root / outcome.files[0])
    m = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-6)
    assert img.get_data_dtype() == np.float32


def test_ct_hounsfield_units_are_integers_and_exact(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(modality="CT", n_slices=4))
    outcome, root = _convert(datasets, tmp_path)
    img = _nii(root / outcome.files[0])
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(img.get_fdata()[:, :, 0], datasets[0].pixel_array[::-1].T.astype(float) - 1024)


def test_a_single_slice_is_written_as_one_slice_or_skipped_by_config(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(n_slices=1))
    outcome, root = _convert(datasets, tmp_path / "a")
    assert _nii(root / outcome.files[0]).shape == (32, 32, 1)
    skipped, _ = _convert(datasets, tmp_path / "b", NiftiOptions(single_slice="skip"))
    assert skipped.files == () and (skipped.skipped_reason or "").startswith("SINGLE_SLICE")


def test_a_projection_radiograph_without_geometry_is_written_2d_or_skipped(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(modality="DX", n_slices=1, rows=40, cols=30))
    for ds in datasets:
        del ds.ImageOrientationPatient, ds.ImagePositionPatient
        ds.PhotometricInterpretation = "MONOCHROME1"
    outcome, root = _convert(datasets, tmp_path / "a")
    img = _nii(root / outcome.files[0])
    assert img.shape == (30, 40, 1)
    assert "MONOCHROME1" in {w.split(":")[0] for w in outcome.warnings}
    skipped, _ = _convert(datasets, tmp_path / "b", NiftiOptions(projection="skip"))
    assert (skipped.skipped_reason or "").startswith("PROJECTION")


def test_several_mr_images_without_a_position_are_refused_not_written_as_a_pile_of_2d_files(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(n_slices=6, rows=16, cols=16, series_description="uih_mosaic"))
    for ds in datasets:  # a vendor layout that dropped the geometry (e.g. a UIH mosaic export)
        del ds.ImageOrientationPatient, ds.ImagePositionPatient
    outcome, _ = _convert(datasets, tmp_path / "mr")
    assert outcome.files == () and outcome.error is None
    assert (outcome.skipped_reason or "").startswith("NO_POSITION: 6 MR images without"), outcome
    radiographs = make_series(STUDY, SeriesSpec(modality="DX", n_slices=2, rows=20, cols=20, series_description="views"))
    for ds in radiographs:  # two views of one radiography series: each a picture of its own, written 2D each
        del ds.ImageOrientationPatient, ds.ImagePositionPatient
    views, _ = _convert(radiographs, tmp_path / "dx")
    assert views.volumes == 2 and views.skipped_reason is None


def test_npz_output_is_float32_zyx_on_the_nifti_grid(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(modality="CT", n_slices=5, rows=16, cols=12))
    outcome, root = _convert(datasets, tmp_path, NiftiOptions(npz=True))
    npz_rel = next(f for f in outcome.files if f.endswith(".npz"))
    img = _nii(root / outcome.files[0])
    with np.load(root / npz_rel) as npz:
        assert npz["data"].dtype == np.float32
        assert npz["data"].shape == (5, 16, 12)
        np.testing.assert_array_equal(npz["data"], img.get_fdata().transpose(2, 1, 0))
        np.testing.assert_allclose(npz["affine"], img.affine, atol=1e-5)


def test_compressed_output_is_the_default_and_names_follow_the_template(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(series_number=3, series_description="T1 MPRAGE / sag"))
    outcome, _ = _convert(datasets, tmp_path, NiftiOptions())
    assert outcome.files[0] == "nifti/3_T1_MPRAGE_sag.nii.gz"
    custom, _ = _convert(datasets, tmp_path / "c", NiftiOptions(name_template="<Modality>-<SeriesNumber>"))
    assert custom.files[0] == "nifti/MR-3.nii.gz"


def test_names_are_unique_across_a_study(tmp_path: Path) -> None:
    a = make_series(STUDY, SeriesSpec(series_number=2, series_description="t1", series_uid="1.2.3.4"))
    b = make_series(STUDY, SeriesSpec(series_number=2, series_description="t1", series_uid="1.2.3.5"))
    files_a, files_b = write_datasets(a, tmp_path / "a"), write_datasets(b, tmp_path / "b")
    outcomes = convert_study({"1.2.3.4": files_a, "1.2.3.5": files_b}, tmp_path / "study" / "nifti", PLAIN)
    assert outcomes["1.2.3.4"].files[0] == "nifti/2_t1.nii"
    assert outcomes["1.2.3.5"].files[0] == "nifti/2_t1_2.nii"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"on_geometry_error": "ignore"}, "on_geometry_error"), ({"localizer": "stack"}, "localizer"),
     ({"name_template": "<NotAKeyword>"}, "NotAKeyword"), ({"max_name_len": 2}, "max_name_len")],
)
def test_invalid_options_are_refused_with_their_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NiftiOptions(**kwargs)


@pytest.mark.parametrize("compressed", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_transfer_syntaxes_decode_to_the_same_voxels(tmp_path: Path, compressed: str) -> None:
    ref = convert_series([_testfile("MR_small.dcm")], tmp_path / "a" / "nifti", PLAIN)
    out = convert_series([_testfile(compressed)], tmp_path / "b" / "nifti", PLAIN)
    a, b = _nii(tmp_path / "a" / ref.files[0]), _nii(tmp_path / "b" / out.files[0])
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
    np.testing.assert_allclose(a.affine, b.affine)


def test_importing_the_nifti_modules_does_not_load_simpleitk() -> None:
    modules = ("node.process.nifti.convert", "node.process.nifti.volumes", "node.process.naming",
               "node.process.nifti.sidecar", "node.process.nifti.headers", "node.process.nifti.mosaic")
    code = (f"import sys; import {', '.join(modules)}; "
            "assert 'SimpleITK' not in sys.modules, 'SimpleITK imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[4])


@pytest.mark.parametrize(
    ("values", "dtype", "slope", "inter"),
    [([0, 4095], np.uint16, 1, -1024), ([0, 60000], np.uint16, 1, -32768), ([0, 30000], np.uint16, 3, -5),
     ([-2000, 3000], np.int16, 2, 100), ([0, 65535], np.uint16, 1, 0), ([0, 255], np.uint8, 4, -7)],
)
def test_integer_rescale_is_exact_whatever_the_intermediate_range(values, dtype, slope: int, inter: int) -> None:
    from node.process.nifti.convert import _integer_scaled

    raw = np.array([[values, values[::-1]]], dtype=dtype)
    expected = raw.astype(np.int64) * slope + inter
    out = _integer_scaled(raw.copy(), slope, inter)
    assert out.dtype.kind in "iu"
    np.testing.assert_array_equal(out.astype(np.int64), expected)
