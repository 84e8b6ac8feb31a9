"""Fault injection for the NIfTI writer: every damaged series is flagged with its reason, none written wrong."""

from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from node.process.nifti.convert import NiftiOptions, convert_series
from toolkit.dicomgen import SeriesSpec, StudySpec, make_multivolume_series, make_series, new_uid, write_datasets

STUDY = StudySpec(series=[])
WRITE_ANYWAY = NiftiOptions(on_geometry_error="write_with_warning", compress=False)


def _nii(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image), path
    return img


def _codes(texts: tuple[str, ...] | str | None) -> set[str]:
    if texts is None:
        return set()
    items = texts.split("; ") if isinstance(texts, str) else texts
    return {t.split(":", 1)[0] for t in items}


def _convert(datasets: list, tmp_path: Path, options: NiftiOptions | None = None):
    files = write_datasets(datasets, tmp_path / "in")
    out = tmp_path / "study" / "nifti"
    return convert_series(files, out, options or NiftiOptions(compress=False)), out


def _load(out: Path, rel: str) -> nib.Nifti1Image:
    return _nii(out.parent / rel)


def test_a_missing_middle_slice_is_flagged_and_not_written(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(n_slices=9))
    del datasets[4]
    outcome, out = _convert(datasets, tmp_path)
    assert outcome.files == ()
    assert "MISSING_SLICE" in _codes(outcome.skipped_reason)
    assert "1 slice(s) missing" in (outcome.skipped_reason or "")
    assert not out.exists() or not any(out.iterdir())


def test_a_missing_slice_is_written_with_its_warning_when_configured(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(n_slices=9))
    del datasets[4]
    outcome, out = _convert(datasets, tmp_path, WRITE_ANYWAY)
    assert outcome.skipped_reason is None
    assert "MISSING_SLICE" in _codes(outcome.warnings)
    img = _load(out, outcome.files[0])
    assert img.shape == (32, 32, 8)
    sidecar = (out / outcome.files[1].split("/")[-1]).read_text()
    assert "MISSING_SLICE" in sidecar


def test_uneven_slice_spacing_is_flagged(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(n_slices=6))
    ipp = list(datasets[3].ImagePositionPatient)
    datasets[3].ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 1.2]
    outcome, _ = _convert(datasets, tmp_path)
    assert outcome.files == ()
    assert "UNEVEN_SPACING" in _codes(outcome.skipped_reason)


def test_a_duplicated_slice_is_dropped_with_a_warning_and_the_volume_is_unchanged(tmp_path: Path) -> None:
    clean = make_series(STUDY, SeriesSpec(n_slices=8))
    expected, out_clean = _convert(clean, tmp_path / "clean")
    duplicate = copy.deepcopy(clean[3])
    duplicate.SOPInstanceUID = new_uid()
    duplicate.file_meta.MediaStorageSOPInstanceUID = duplicate.SOPInstanceUID
    outcome, out = _convert([*clean, duplicate], tmp_path / "dup")
    assert "DUPLICATE_SLICE" in _codes(outcome.warnings)
    img = _load(out, outcome.files[0])
    assert img.shape == (32, 32, 8)
    np.testing.assert_array_equal(img.get_fdata(), _load(out_clean, expected.files[0]).get_fdata())


def test_the_same_file_listed_twice_is_read_once(tmp_path: Path) -> None:
    files = write_datasets(make_series(STUDY, SeriesSpec(n_slices=5)), tmp_path / "in")
    outcome = convert_series([*files, files[2]], tmp_path / "s" / "nifti", NiftiOptions(compress=False))
    assert outcome.volumes == 1
    assert "DUPLICATE_SLICE" in _codes(outcome.warnings)


def test_mixed_orientations_are_split_with_a_reason_and_the_gap_is_flagged(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(n_slices=9, series_description="t1_tse_tra"))
    stray = make_series(STUDY, SeriesSpec(n_slices=1, orientation="SAG", series_uid=datasets[0].SeriesInstanceUID))[0]
    stray.InstanceNumber = datasets[4].InstanceNumber
    datasets[4] = stray
    outcome, _ = _convert(datasets, tmp_path)
    assert "SPLIT_ORIENTATION" in _codes(outcome.warnings)
    # The axial part now lacks its middle slice: refused; the stray sagittal image is a single slice.
    assert "MISSING_SLICE" in _codes(outcome.warnings)
    assert [f for f in outcome.files if f.endswith(".nii")] == ["nifti/1_t1_tse_tra_i00005.nii"]


def test_a_fractional_slope_on_one_slice_gives_exact_float32_values(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(n_slices=6, rescale=(1.0, 0.0)))
    datasets[2].RescaleSlope = 0.5
    datasets[2].RescaleIntercept = -3.25
    outcome, out = _convert(datasets, tmp_path)
    assert "RESCALE_VARIES" in _codes(outcome.warnings)
    img = _load(out, outcome.files[0])
    assert img.get_data_dtype() == np.float32
    data = img.get_fdata()
    raw = datasets[2].pixel_array[::-1].T.astype(float)
    np.testing.assert_array_equal(data[:, :, 2], raw * 0.5 - 3.25)
    np.testing.assert_array_equal(data[:, :, 1], datasets[1].pixel_array[::-1].T.astype(float))


def test_an_integer_slope_and_intercept_shared_by_all_slices_keep_integer_voxels(tmp_path: Path) -> None:
    datasets = make_series(STUDY, SeriesSpec(n_slices=4, rescale=(2.0, -1000.0)))
    outcome, out = _convert(datasets, tmp_path)
    img = _load(out, outcome.files[0])
    assert img.get_data_dtype().kind == "i"
    expected = datasets[0].pixel_array[::-1].T.astype(float) * 2 - 1000
    np.testing.assert_array_equal(img.get_fdata()[:, :, 0], expected)


def test_a_truncated_4d_series_is_refused_by_default(tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=6, series_description="bold")
    datasets = make_multivolume_series(STUDY, spec, [{"AcquisitionNumber": t + 1} for t in range(4)])
    datasets = datasets[:-2]  # the scanner stopped two slices before the end
    outcome, _ = _convert(datasets, tmp_path)
    assert outcome.files == ()
    assert "INCOMPLETE_4D" in _codes(outcome.skipped_reason)


def test_a_truncated_4d_series_keeps_only_complete_volumes_when_written_anyway(tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=6, series_description="bold")
    datasets = make_multivolume_series(STUDY, spec, [{"AcquisitionNumber": t + 1} for t in range(4)])
    outcome, out = _convert(datasets[:-2], tmp_path, WRITE_ANYWAY)
    assert "INCOMPLETE_4D" in _codes(outcome.warnings)
    img = _load(out, outcome.files[0])
    assert img.shape == (32, 32, 6, 3)


def test_unreadable_files_are_reported_and_the_rest_converted(tmp_path: Path) -> None:
    files = write_datasets(make_series(STUDY, SeriesSpec(n_slices=4)), tmp_path / "in")
    junk = tmp_path / "in" / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    outcome = convert_series([*files, junk], tmp_path / "s" / "nifti", NiftiOptions(compress=False))
    assert outcome.volumes == 1
    assert "UNREADABLE" in _codes(outcome.warnings)


def test_a_series_of_only_garbage_becomes_an_error_not_an_exception(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 200)
    outcome = convert_series([junk], tmp_path / "s" / "nifti")
    assert outcome.files == ()
    assert outcome.error is not None and "NO_IMAGES" in outcome.error


def test_truncated_pixel_data_becomes_an_error_not_an_exception(tmp_path: Path) -> None:
    files = write_datasets(make_series(STUDY, SeriesSpec(n_slices=3)), tmp_path / "in")
    files[1].write_bytes(files[1].read_bytes()[:-500])
    outcome = convert_series(files, tmp_path / "s" / "nifti")
    assert outcome.files == ()
    assert outcome.error is not None


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_a_three_plane_localizer_is_skipped_by_default(tmp_path: Path, position: str) -> None:
    uid = new_uid()
    datasets = []
    for i, orient in enumerate(["AX", "SAG", "COR"]):
        spec = SeriesSpec(n_slices=3, orientation=orient, series_uid=uid, series_description="localizer",
                          patient_position=position)
        for ds in make_series(STUDY, spec):
            ds.InstanceNumber = int(ds.InstanceNumber) + 3 * i
            datasets.append(ds)
    outcome, _ = _convert(datasets, tmp_path)
    assert outcome.files == ()
    assert "LOCALIZER" in _codes(outcome.skipped_reason)
    per_plane, _ = _convert(datasets, tmp_path / "pp", NiftiOptions(localizer="per_plane", compress=False))
    assert sorted(f for f in per_plane.files if f.endswith(".nii")) == [
        "nifti/1_localizer_i00001.nii", "nifti/1_localizer_i00004.nii", "nifti/1_localizer_i00007.nii"]
    assert not _codes(per_plane.warnings)


def test_a_mosaic_that_is_not_a_whole_grid_of_tiles_is_refused(tmp_path: Path) -> None:
    # nibabel's 0.dcm holds 48 tiles of 36x36 in a 256x256 image (its pixels were replaced by a ramp):
    # cutting it would mean guessing the stride, so it is refused with the reason.
    found = Path(nib.__file__).parent / "tests" / "data" / "0.dcm"
    assert found.is_file(), "nibabel's test mosaic 0.dcm is missing"
    outcome = convert_series([found], tmp_path / "s" / "nifti")
    assert outcome.files == ()
    assert outcome.error is not None and "NO_IMAGES" in outcome.error
    assert "not a whole 7x7 grid of tiles" in outcome.warnings[0]


def test_colour_images_are_refused_with_a_reason(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    found = get_testdata_file("SC_rgb.dcm")
    assert isinstance(found, str)
    outcome = convert_series([Path(found)], tmp_path / "s" / "nifti")
    assert "COLOR" in _codes(outcome.skipped_reason)


def test_a_series_above_max_series_mb_is_skipped_with_its_reason_before_any_pixel_is_read(tmp_path: Path) -> None:
    # 20 slices of 512 x 512 are 20 MiB as 32-bit values: above a 16 MiB cap, below the default.
    datasets = make_series(STUDY, SeriesSpec(n_slices=20, rows=512, cols=512))
    outcome, out = _convert(datasets, tmp_path, NiftiOptions(compress=False, max_series_mb=16))
    assert outcome.files == () and not list(out.glob("*.nii*"))
    assert _codes(outcome.skipped_reason) == {"TOO_LARGE"}
    assert "20 MiB" in str(outcome.skipped_reason)
    outcome, _ = _convert(datasets, tmp_path / "default", NiftiOptions(compress=False))
    assert outcome.volumes == 1 and outcome.skipped_reason is None


@pytest.mark.parametrize("user_data", ["abc", "9", "-1", "1e400", ""])
def test_a_ge_pepolar_flag_that_is_not_one_of_its_values_flips_and_splits_nothing(tmp_path: Path,
                                                                                user_data: str) -> None:
    """A damaged or unknown GE user data 12 is not guessed at: the run is written as stored, in one file."""
    datasets = make_multivolume_series(STUDY, SeriesSpec(series_number=17, series_description="pepolar", n_slices=3,
                                                         rows=6, cols=8,
                                                         extra={"Manufacturer": "GE MEDICAL SYSTEMS",
                                                                "InPlanePhaseEncodingDirection": "COL"}),
                                       [{"TemporalPositionIdentifier": t + 1} for t in range(4)])
    plain = write_datasets(copy.deepcopy(datasets), tmp_path / "plain")
    for ds in datasets:
        block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        block.add_new(0x9C, "LO", "epi_pepolar")
        block.add_new(0xB3, "LO", user_data)  # LO: the value is free text here, not a DS the writer checks
    flagged = write_datasets(datasets, tmp_path / "flagged")
    ours = convert_series(flagged, tmp_path / "a" / "nifti", NiftiOptions(compress=False))
    ref = convert_series(plain, tmp_path / "b" / "nifti", NiftiOptions(compress=False))
    assert ours.error is None and [f for f in ours.files if f.endswith(".nii")] == ["nifti/17_pepolar.nii"]
    assert not any(w.startswith("PEPOLAR") for w in ours.warnings)
    np.testing.assert_array_equal(_load(tmp_path / "a" / "nifti", "nifti/17_pepolar.nii").get_fdata(),
                                  _load(tmp_path / "b" / "nifti", ref.files[0]).get_fdata())
