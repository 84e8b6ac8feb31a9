"""Objects without pixels in a series (SR, presentation states) are skipped with a reason, never an error."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node.process.nifti.convert import NiftiOptions, convert_series
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series, write_datasets

STUDY = StudySpec(series=[])


def non_image(folder: Path, sop_class: str, modality: str, series_uid: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = STUDY.study_uid, series_uid, modality
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_series_of_reports_is_skipped_with_a_reason_not_failed(tmp_path: Path) -> None:
    uid = generate_uid()
    files = [non_image(tmp_path / "src", "1.2.840.10008.5.1.4.1.1.88.22", "SR", uid) for _ in range(2)]
    outcome = convert_series(files, tmp_path / "out", NiftiOptions())
    assert outcome.error is None and outcome.files == ()
    assert outcome.skipped_reason is not None and outcome.skipped_reason.startswith("NON_IMAGE: 2 object(s)")
    assert "(SR)" in outcome.skipped_reason


def test_a_presentation_state_among_images_is_a_note_and_the_images_are_written(tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=5, rows=16, cols=16, series_description="t1")
    files = write_datasets(make_series(STUDY, spec), tmp_path / "src")
    files.append(non_image(tmp_path / "src", "1.2.840.10008.5.1.4.1.1.11.1", "PR", spec.series_uid))
    outcome = convert_series(files, tmp_path / "out", NiftiOptions())
    assert outcome.error is None and outcome.volumes == 1
    assert any(w.startswith("NON_IMAGE: 1 object(s) without pixels (PR)") for w in outcome.warnings), outcome.warnings
    assert not any(w.startswith("UNREADABLE") for w in outcome.warnings)
