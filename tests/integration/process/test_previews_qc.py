"""A study through the worker job: previews, QC flags and the new Series_Summary columns, read back from the outbox."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from openpyxl import load_workbook
from PIL import Image

from node.process.processor import StudyJob, run_job
from node.process.qc import QcConfig
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series

OUTPUTS = ("excel", "nifti")


def stored_study(root: Path, study: StudySpec, drop_slice: dict[str, int] | None = None) -> Path:
    """The study laid out as the store keeps it: <store>/<study>/<series>/<sop>.dcm."""
    store = root / "store"
    for spec in study.series:
        datasets = make_series(study, spec)
        if drop_slice and spec.series_description in drop_slice:
            del datasets[drop_slice[spec.series_description]]
        folder = store / study.study_uid / spec.series_uid
        folder.mkdir(parents=True)
        for ds in datasets:
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return store


def run(root: Path, study: StudySpec, store: Path, headers: str = "label", qc: QcConfig | None = None) -> Path:
    outbox = root / "outbox"
    outbox.mkdir(exist_ok=True)
    job = StudyJob(study.study_uid, 1, False, "test", str(store), str(outbox), "STUDY", OUTPUTS,
                   qc=qc or QcConfig.from_section({}), workbook_headers=headers)
    result = run_job(job)
    assert result.ok, result.reason
    return outbox / result.folder


def test_each_volume_gets_a_preview_listed_in_the_manifest_workbook_and_qc_report(tmp_path: Path) -> None:
    study = StudySpec(series=[
        SeriesSpec(modality="CT", series_number=1, series_description="ct_thin", n_slices=24, slice_spacing=1.0,
                   rows=48, cols=48),
        SeriesSpec(modality="CT", series_number=2, series_description="ct_gap", n_slices=16, slice_spacing=2.0,
                   rows=48, cols=48),
    ])
    folder = run(tmp_path, study, stored_study(tmp_path, study, drop_slice={"ct_gap": 8}))
    pngs = sorted((folder / "previews").glob("*.png"))
    # The series with a missing slice is not stacked into NIfTI (nifti.on_geometry_error: skip), so it has no
    # preview: previews come from the array the NIfTI step builds.
    assert [p.name for p in pngs] == ["1_ct_thin.png"]
    thin = Image.open(pngs[0])
    assert thin.size == (3 * 256 + 8, 256)  # 24 thin slices: three orthogonal planes
    assert np.asarray(thin).std() > 10
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {o["path"] for o in manifest["outputs"]}
    assert {"previews/1_ct_thin.png", "qc_report.html"} <= listed
    qc = {e["description"]: e for e in manifest["qc"]}
    assert qc["ct_thin"]["low_quality"] is False and qc["ct_thin"]["previews"] == ["previews/1_ct_thin.png"]
    assert qc["ct_gap"]["low_quality"] is True and qc["ct_gap"]["flags"][0].startswith("MISSING_SLICES")
    ws = load_workbook(folder / "metadata.xlsx", read_only=True)["Series_Summary"]
    rows = list(ws.iter_rows(values_only=True))
    header = list(rows[0])
    # read_only rows drop trailing empty cells: pad them back to the header's width
    by_desc = {r[header.index("Series Description")]: dict(zip(header, [*r, *[None] * (len(header) - len(r))],
                                                               strict=True)) for r in rows[1:]}
    assert by_desc["ct_thin"]["Low Quality"] == "no" and by_desc["ct_thin"]["Low Quality Reason"] is None
    assert by_desc["ct_gap"]["Low Quality"] == "yes" and "MISSING_SLICES" in by_desc["ct_gap"]["Low Quality Reason"]
    assert by_desc["ct_gap"]["File Count"] == 15
    assert by_desc["ct_thin"]["Previews"] == "previews/1_ct_thin.png"
    assert by_desc["ct_thin"]["Patient ID"] == study.patient_id
    assert by_desc["ct_thin"]["Accession Number"] == study.accession
    assert by_desc["ct_thin"]["Study Date"].strftime("%Y%m%d") == study.study_date  # a DA cell is an Excel date
    linked = load_workbook(folder / "metadata.xlsx")["Series_Summary"]  # not read_only: hyperlinks
    links = {c.value: c.hyperlink.target for row in linked.iter_rows() for c in row if c.hyperlink is not None}
    assert links["previews/1_ct_thin.png"] == "previews/1_ct_thin.png"  # the preview opens from the workbook
    assert links["nifti/1_ct_thin.nii.gz; nifti/1_ct_thin.json"] == "nifti/1_ct_thin.nii.gz"
    report = (folder / "qc_report.html").read_text()
    assert 'src="previews/1_ct_thin.png"' in report and "MISSING_SLICES" in report and "1 flagged" in report


def test_keyword_headers_put_dicom_keywords_on_every_sheet(tmp_path: Path) -> None:
    study = StudySpec(series=[SeriesSpec(n_slices=6, rows=16, cols=16)])
    folder = run(tmp_path, study, stored_study(tmp_path, study), headers="keyword")
    wb = load_workbook(folder / "metadata.xlsx", read_only=True)
    summary_header = next(wb["Series_Summary"].iter_rows(values_only=True))
    assert {"SeriesNumber", "SeriesInstanceUID", "PatientID", "AccessionNumber", "StudyDate", "FileCount",
            "Low_quality", "Low_quality_reason"} <= set(summary_header)
    assert "Series Number" not in summary_header
    metadata_header = next(wb["DICOM_Metadata"].iter_rows(values_only=True))
    assert "SOPInstanceUID" in metadata_header and "StudyInstanceUID" in metadata_header


def test_with_qc_off_there_are_no_previews_flags_or_report(tmp_path: Path) -> None:
    study = StudySpec(series=[SeriesSpec(n_slices=6, rows=16, cols=16)])
    folder = run(tmp_path, study, stored_study(tmp_path, study),
                 qc=QcConfig.from_section({"enabled": False, "previews": False}))
    assert not (folder / "previews").exists() and not (folder / "qc_report.html").exists()
    assert json.loads((folder / "manifest.json").read_text())["qc"] is None


def test_one_metadata_row_per_ct_or_mr_series_when_asked(tmp_path: Path) -> None:
    study = StudySpec(series=[SeriesSpec(modality="CT", n_slices=7, rows=16, cols=16, series_number=1),
                              SeriesSpec(modality="MR", n_slices=5, rows=16, cols=16, series_number=2)])
    store = stored_study(tmp_path, study)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    job = StudyJob(study.study_uid, 1, False, "test", str(store), str(outbox), "STUDY", ("excel",),
                   metadata_rows="series")
    assert run_job(job).ok
    ws = load_workbook(outbox / "STUDY" / "metadata.xlsx", read_only=True)
    rows = list(ws["DICOM_Metadata"].iter_rows(values_only=True))
    header = rows[0]
    assert len(rows) == 3  # header + one row per series
    numbers = sorted(r[header.index("Instance Number")] for r in rows[1:])
    assert numbers == [1, 1]  # each series' first instance
    summary = list(ws["Series_Summary"].iter_rows(values_only=True))
    assert sorted(r[summary[0].index("Instances")] for r in summary[1:]) == [5, 7]  # the summary still counts all
