"""The metadata workbook read back with openpyxl and checked cell by cell against pydicom's own decoding."""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import deid_data
import pydicom
import pydicom.data
import pytest
from openpyxl import load_workbook
from openpyxl.cell import Cell
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    MRImageStorage,
    generate_uid,
)

from node.process.outputs import SeriesOutcome
from node.process.workbook.metadata import (
    SHEET_INSTANCES,
    SHEET_MR,
    SHEET_SERIES,
    WorkbookResult,
    build_workbook,
    load_templates,
)
from node.process.workbook.summary import orientation_label
from tests.support.handmade import enhanced_mr, part10
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series, oblique_iop, write_datasets

CHARSET_FILES = Path(pydicom.data.__file__).parent / "charset_files"
DEID_FILES = Path(deid_data.__file__).parent / "data"
UID_64 = "1.2.826.0.1.3680043.8.498." + "1" * 38
assert len(UID_64) == 64


# ---------------------------------------------------------------------------------------------- helpers


def copy_in(folder: Path, sources: Iterable[Path]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources:
        dst = folder / src.name
        shutil.copy(src, dst)
        out.append(dst)
    return out


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing from the installed wheel"
    return Path(str(path))


def sheet_rows(path: Path, name: str) -> list[dict[str, Cell]]:
    ws = load_workbook(path)[name]
    header = [c.value for c in ws[1]]
    return [dict(zip(header, row, strict=True)) for row in ws.iter_rows(min_row=2)]


def build(tmp_path: Path, files: list[Path], outcomes: Any = None, **kwargs: Any) -> tuple[WorkbookResult, Path]:
    out = tmp_path / "metadata.xlsx"
    result = build_workbook(files, tmp_path / "study", out, outcomes, **kwargs)
    return result, out




def expected_from_pydicom(ds: Dataset, keyword: str) -> tuple[str, Any] | None:
    """(VR, value) of a top-level attribute as pydicom decodes it, normalised for comparison; None if empty."""
    if keyword not in ds:
        return None
    elem = ds[keyword]
    if elem.VR == "SQ" or elem.value is None or elem.value == "" or elem.value == b"":
        return None
    values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
    out = [normal_value(v, elem.VR) for v in values]
    return elem.VR, (out[0] if len(out) == 1 else out)


def normal_value(value: Any, vr: str) -> Any:
    text = str(value).strip()
    if vr == "DA":
        return f"{text[:4]}-{text[4:6]}-{text[6:8]}"
    if vr == "TM":
        clock, _, fraction = text.replace(":", "").partition(".")
        clock = clock.ljust(6, "0")
        micro = int(fraction.ljust(6, "0")) if fraction else 0
        return datetime.time(int(clock[:2]), int(clock[2:4]), int(clock[4:6]), micro).isoformat()
    if vr in ("DS", "FL", "FD"):
        return float(value)
    if vr in ("IS", "US", "SS", "UL", "SL"):
        return int(value)
    return text


def normal_cell(cell: Cell, vr: str, expect_list: bool) -> Any:
    value = cell.value
    if vr == "DA" and isinstance(value, str) and value < "1900":
        # Excel has no dates before 1900: those stay the DICOM text.
        return normal_value(value, vr)
    if vr == "DA":
        assert isinstance(value, datetime.datetime), f"{cell.coordinate}: DA not typed as a date: {value!r}"
        return value.date().isoformat()
    if vr == "TM":
        assert isinstance(value, datetime.time), f"{cell.coordinate}: TM not typed as a time: {value!r}"
        return value.isoformat()
    if expect_list:
        assert isinstance(value, str), f"{cell.coordinate}: multi-valued cell is not text: {value!r}"
        return [normal_value(v, vr) for v in value.split("\\")]
    if vr in ("DS", "FL", "FD", "IS", "US", "SS", "UL", "SL"):
        assert isinstance(value, int | float), f"{cell.coordinate}: number stored as {type(value).__name__}"
        return normal_value(value, vr)
    assert isinstance(value, str), f"{cell.coordinate}: {vr} text stored as {type(value).__name__}: {value!r}"
    return value


def assert_row_matches_pydicom(row: dict[str, Cell], path: Path) -> int:
    """Every template column of the row equals pydicom's decoding of the file; returns cells compared."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    template = load_templates().for_modality(ds.get("Modality"))
    compared = 0
    for attribute in template.attributes:
        if "." in attribute.key or attribute.key not in pydicom.datadict.keyword_dict:
            continue
        cell = row[attribute.column] if attribute.column in row else row[f"{attribute.column} [{attribute.key}]"]
        expected = expected_from_pydicom(ds, attribute.key)
        if expected is None:
            if attribute.key not in ds or ds[attribute.key].VR != "SQ":
                assert cell.value is None, f"{path.name} {attribute.key}: expected empty, got {cell.value!r}"
            continue
        vr, value = expected
        assert normal_cell(cell, vr, isinstance(value, list)) == value, f"{path.name} {attribute.key}"
        compared += 1
    return compared


# ---------------------------------------------------------------------------------------------- modalities


@pytest.fixture(scope="module")
def modality_workbook(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkbookResult, Path, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("modalities")
    study = tmp / "study"
    sources = {
        "CT_small.dcm": pydicom_file("CT_small.dcm"),
        "MR_small.dcm": pydicom_file("MR_small.dcm"),
        "cat.dcm": DEID_FILES / "animals" / "cat.dcm",  # DX
        "chrJapMulti.dcm": CHARSET_FILES / "chrJapMulti.dcm",  # CR
    }
    files = copy_in(study, sources.values())
    files.append(make_mammogram(study))
    out = tmp / "metadata.xlsx"
    result = build_workbook(files, study, out, workers=1)
    return result, out, {p.name: p for p in files}


def make_mammogram(folder: Path) -> Path:
    """A realistic MG header (no package ships one): view, laterality, exposure, compression, dose."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID, ds.PatientName, ds.PatientSex = "MG0001", "SYNTHETIC^MAMMO", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20250301", "083000", "MG25030100001"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MG", 71, 1
    ds.Manufacturer, ds.ManufacturerModelName = "HOLOGIC, Inc.", "Selenia Dimensions"
    ds.BodyPartExamined, ds.ViewPosition, ds.ImageLaterality = "BREAST", "CC", "L"
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "399162004", "SCT", "cranio-caudal"
    ds.ViewCodeSequence = Sequence([view])
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.KVP, ds.ExposureTime, ds.XRayTubeCurrent, ds.Exposure, ds.ExposureInuAs = 29.0, 1139, 158, 180, 180000
    ds.AnodeTargetMaterial, ds.FilterMaterial = "TUNGSTEN", "RHODIUM"
    ds.CompressionForce, ds.BodyPartThickness = 103.0, 52.0
    ds.OrganDose, ds.EntranceDoseInmGy = 0.0123, 4.2
    ds.DetectorType, ds.DetectorID = "DIRECT", "SN12345"
    ds.PositionerPrimaryAngle, ds.BreastImplantPresent = 0.0, "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.Rows, ds.Columns = 4096, 3328
    ds.ImagerPixelSpacing = [0.07, 0.07]
    return part10(ds, DigitalMammographyXRayImageStorageForPresentation, folder, "mammo.dcm")


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "cat.dcm", "chrJapMulti.dcm", "mammo.dcm"])
def test_each_modality_row_equals_pydicom_cell_by_cell(modality_workbook: Any, name: str) -> None:
    _, out, files = modality_workbook
    rows = {r["File"].value: r for r in sheet_rows(out, SHEET_INSTANCES)}
    compared = assert_row_matches_pydicom(rows[name], files[name])
    assert compared >= 15, f"only {compared} cells compared for {name}"


def test_the_modality_specific_columns_hold_the_expected_values(modality_workbook: Any) -> None:
    _, out, _ = modality_workbook
    rows = {r["File"].value: r for r in sheet_rows(out, SHEET_INSTANCES)}
    ct, mg, dx = rows["CT_small.dcm"], rows["mammo.dcm"], rows["cat.dcm"]
    assert (ct["kVp"].value, ct["Kernel"].value, ct["Gantry Tilt (deg)"].value) == (120, "STANDARD", 0)
    assert ct["Image Type"].value == "ORIGINAL\\PRIMARY\\AXIAL"
    assert mg["View"].value == "cranio-caudal"  # ViewCodeSequence.CodeMeaning, flattened
    assert (mg["Compression Force (N)"].value, mg["Organ Dose (dGy)"].value) == (103, 0.0123)
    assert (mg["Image Laterality"].value, mg["Presentation Intent"].value) == ("L", "FOR PRESENTATION")
    assert mg["Imager Pixel Spacing (mm)"].value == "0.07\\0.07"
    assert (dx["View Position"].value, dx["View"].value, dx["Detector Type"].value) == ("AP", "antero-posterior", "DIRECT")


def test_identifiers_stay_text_and_dates_are_typed(modality_workbook: Any) -> None:
    _, out, files = modality_workbook
    rows = {r["File"].value: r for r in sheet_rows(out, SHEET_INSTANCES)}
    ds = pydicom.dcmread(files["cat.dcm"], stop_before_pixels=True)
    row = rows["cat.dcm"]
    for column, keyword in [("SOP Instance UID", "SOPInstanceUID"), ("Patient ID", "PatientID"),
                            ("Study ID", "StudyID"), ("Study Instance UID", "StudyInstanceUID")]:
        assert row[column].data_type == "s" and row[column].value == ds[keyword].value
    assert row["Study Date"].is_date and row["Study Time"].is_date


def test_the_workbook_has_frozen_headers_autofilters_and_sized_columns(modality_workbook: Any) -> None:
    result, out, _ = modality_workbook
    wb = load_workbook(out)
    assert wb.sheetnames == [SHEET_INSTANCES, SHEET_SERIES, SHEET_MR]
    for ws in wb.worksheets:
        assert ws.freeze_panes == "A2"
        assert ws.auto_filter.ref == f"A1:{ws.cell(1, ws.max_column).column_letter}{ws.max_row}"
        widths = [ws.column_dimensions[ws.cell(1, i).column_letter].width for i in range(1, ws.max_column + 1)]
        assert all(8 <= w <= 60 for w in widths)
    assert result.sheets[SHEET_INSTANCES] == 5
    assert len(result.instances) == 5


# ---------------------------------------------------------------------------------------------- values


@pytest.fixture(scope="module")
def tricky_workbook(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkbookResult, dict[str, dict[str, Cell]]]:
    tmp = tmp_path_factory.mktemp("tricky")
    study = tmp / "study"
    files = copy_in(study, [CHARSET_FILES / n for n in ("chrX2.dcm", "chrH31.dcm", "chrX1.dcm", "chrI2.dcm")])
    ds = Dataset()
    ds.PatientID, ds.AccessionNumber = "0012345", "=1+1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = UID_64, generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, 1
    ds.StudyDescription = "=HYPERLINK(\"http://example.invalid\")"
    ds.SeriesDescription = "t1\x01bad\x1fchars"
    # GB18030 bytes and no SpecificCharacterSet: written raw, as a misconfigured modality would.
    ds.add_new(0x00100010, "PN", "王^小东".encode("gb18030"))
    files.append(part10(ds, MRImageStorage, study, "gb_undeclared.dcm"))
    (study / "notes.txt").write_text("not DICOM", encoding="utf-8")
    files.append(study / "notes.txt")
    out = tmp / "metadata.xlsx"
    result = build_workbook(files, study, out, workers=1)
    rows = {r["File"].value: r for r in sheet_rows(out, SHEET_INSTANCES)}
    return result, rows


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrX2.dcm", "Wang^XiaoDong=王^小东"),
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("chrX1.dcm", "Wang^XiaoDong=王^小東"),
        ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),
    ],
)
def test_chinese_japanese_and_korean_names_decode_by_their_declared_charset(tricky_workbook: Any, name: str,
                                                                             expected: str) -> None:
    _, rows = tricky_workbook
    assert rows[name]["Patient Name"].value == expected
    assert rows[name]["Row Flags"].value is None


def test_gb18030_bytes_without_a_declaration_decode_and_the_row_is_flagged(tricky_workbook: Any) -> None:
    result, rows = tricky_workbook
    row = rows["gb_undeclared.dcm"]
    assert row["Patient Name"].value == "王^小东"
    assert row["Row Flags"].value == "CHARSET_FALLBACK: PatientName: no SpecificCharacterSet; decoded as gb18030"
    assert any(w.startswith("CHARSET_FALLBACK: 1 instance(s)") for w in result.warnings)


def test_values_starting_with_equals_stay_text_not_formulas(tricky_workbook: Any) -> None:
    _, rows = tricky_workbook
    row = rows["gb_undeclared.dcm"]
    assert (row["Accession Number"].value, row["Accession Number"].data_type) == ("=1+1", "s")
    assert row["Study Description"].data_type == "s"
    assert row["Study Description"].value == "=HYPERLINK(\"http://example.invalid\")"


def test_a_64_character_uid_and_a_leading_zero_id_are_kept_exactly(tricky_workbook: Any) -> None:
    _, rows = tricky_workbook
    row = rows["gb_undeclared.dcm"]
    assert (row["Study Instance UID"].value, row["Study Instance UID"].data_type) == (UID_64, "s")
    assert (row["Patient ID"].value, row["Patient ID"].data_type) == ("0012345", "s")


def test_characters_excel_refuses_are_escaped_not_crashed_on(tricky_workbook: Any) -> None:
    _, rows = tricky_workbook
    assert rows["gb_undeclared.dcm"]["Series Description"].value == "t1\\x01bad\\x1fchars"


def test_a_file_that_is_not_dicom_becomes_a_warning(tricky_workbook: Any) -> None:
    result, rows = tricky_workbook
    assert "notes.txt" not in rows
    assert result.unreadable == ["notes.txt"]
    assert any(w.startswith("UNREADABLE: notes.txt") for w in result.warnings)


def test_little_big_endian_and_implicit_files_give_identical_rows(tmp_path: Path) -> None:
    names = ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]
    result, _ = build(tmp_path, copy_in(tmp_path / "study", [pydicom_file(n) for n in names]), workers=1)
    frame = result.instances.set_index("File").drop(columns=["RowFlags"])
    reference = frame.loc["MR_small.dcm"]
    for name in names[1:]:
        assert frame.loc[name].to_dict() == reference.to_dict(), name
    assert reference["Rows"] == 64 and reference["ImagePositionPatient"] == [-83.9063, -91.2, 6.6406]


# ---------------------------------------------------------------------------------------------- b-values, series


def diffusion_series(study: StudySpec, number: int, private: dict[tuple[str, int, int, str], Any]) -> list[Dataset]:
    spec = SeriesSpec(n_slices=2, series_number=number, series_description=f"ep2d_diff_{number}")
    datasets = make_series(study, spec)
    for ds in datasets:
        for (creator, group, offset, vr), value in private.items():
            ds.private_block(group, creator, create=True).add_new(offset, vr, value)
    return datasets


def test_the_b_value_comes_from_the_standard_tag_or_the_vendor_private_tag(tmp_path: Path) -> None:
    study = StudySpec(series=[])
    datasets = (
        diffusion_series(study, 1, {("SIEMENS MR HEADER", 0x0019, 0x0C, "IS"): "1000"})
        + diffusion_series(study, 2, {("GEMS_PARM_01", 0x0043, 0x39, "IS"): ["1000000800", "8", "0", "0"]})
        + diffusion_series(study, 3, {("Philips Imaging DD 001", 0x2001, 0x03, "FL"): 500.0})
        + diffusion_series(study, 4, {("SIEMENS MR HEADER", 0x0019, 0x0C, "IS"): "1000"})
    )
    for ds in datasets[-2:]:
        ds.DiffusionBValue = 1500.0  # the standard attribute wins over the private one
    files = write_datasets(datasets, tmp_path / "study")
    result, out = build(tmp_path, files, workers=1)
    by_series = result.instances.groupby("SeriesNumber")["DiffusionBValue"].unique().to_dict()
    assert {k: list(v) for k, v in by_series.items()} == {1: [1000], 2: [800], 3: [500.0], 4: [1500.0]}
    cells = [r["b-value (s/mm2)"].value for r in sheet_rows(out, SHEET_INSTANCES)]
    assert cells == [1000, 1000, 800, 800, 500, 500, 1500, 1500]


def test_series_summary_reports_counts_geometry_flags_and_nifti_outcomes(tmp_path: Path) -> None:
    study = StudySpec(series=[
        SeriesSpec(series_number=1, series_description="localizer", n_slices=3, orientation="AX",
                   extra={"ImageOrientationPatient": lambda k: [[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1],
                                                                [1, 0, 0, 0, 0, -1]][k]}),
        SeriesSpec(series_number=2, series_description="t2_tse_sag", n_slices=5, orientation="SAG", slice_spacing=4.0),
        SeriesSpec(series_number=3, series_description="t1_mpr_cor", n_slices=4, orientation="COR",
                   extra={"ImageType": ["DERIVED", "SECONDARY", "MPR"]}),
    ])
    datasets = [ds for spec in study.series for ds in make_series(study, spec)]
    files = write_datasets(datasets, tmp_path / "study")
    uids = [s.series_uid for s in study.series]
    outcomes = {
        uids[0]: SeriesOutcome(uids[0], skipped_reason="LOCALIZER: 3-plane localizer not stacked"),
        uids[1]: SeriesOutcome(uids[1], volumes=1, files=("nifti/2_t2_tse_sag.nii.gz",),
                               warnings=("GAP: uneven slice spacing",)),
        uids[2]: SeriesOutcome(uids[2], error="conversion failed"),
    }
    result, out = build(tmp_path, files, outcomes, workers=1)
    rows = sheet_rows(out, SHEET_SERIES)
    assert [r["Series Number"].value for r in rows] == [1, 2, 3]
    loc, sag, mpr = rows
    assert (loc["Instances"].value, loc["Localizer"].value, loc["Orientation"].value) == (3, "yes",
                                                                                          "mixed: AX, SAG, COR")
    assert loc["NIfTI Status"].value == "skipped: LOCALIZER: 3-plane localizer not stacked"
    assert (sag["Instances"].value, sag["Orientation"].value, sag["Slice Spacing (mm)"].value) == (5, "SAG", 4)
    assert (sag["Volumes"].value, sag["NIfTI Files"].value) == (1, "nifti/2_t2_tse_sag.nii.gz")
    assert (sag["Matrix"].value, sag["Pixel Spacing (mm)"].value, sag["Localizer"].value) == ("32x32", "0.9\\0.8", "no")
    assert sag["Warnings"].value == "GAP: uneven slice spacing"
    assert (mpr["Derived"].value, mpr["NIfTI Status"].value) == ("yes", "error: conversion failed")
    assert mpr["Reasons"].value == "derived: ImageType SECONDARY"
    assert result.sheets[SHEET_SERIES] == 3


def test_without_nifti_outcomes_the_nifti_columns_are_empty(tmp_path: Path) -> None:
    study = StudySpec(series=[SeriesSpec(n_slices=2)])
    files = write_datasets(make_series(study, study.series[0]), tmp_path / "study")
    _, out = build(tmp_path, files, None, workers=1)
    (row,) = sheet_rows(out, SHEET_SERIES)
    assert [row[c].value for c in ("Volumes", "NIfTI Files", "NIfTI Status")] == [None, None, None]


# ---------------------------------------------------------------------------------------------- spills, MR_Cleaned


def test_over_the_row_limit_the_sheet_spills_in_order_and_says_so(tmp_path: Path) -> None:
    study = StudySpec(series=[SeriesSpec(n_slices=7, shuffle_instance_numbers=True)])
    files = write_datasets(make_series(study, study.series[0]), tmp_path / "study")
    result, out = build(tmp_path, files, workers=1, max_rows=4)
    names = [SHEET_INSTANCES, f"{SHEET_INSTANCES}_2", f"{SHEET_INSTANCES}_3"]
    assert [result.sheets[n] for n in names] == [3, 3, 1]
    numbers = [r["Instance Number"].value for n in names for r in sheet_rows(out, n)]
    assert numbers == [1, 2, 3, 4, 5, 6, 7]
    (spill,) = [w for w in result.warnings if w.startswith("SPILL")]
    assert f"rows continue in order on {names[1]}, {names[2]}" in spill


def test_the_mr_cleaned_sheet_appears_for_mr_and_not_for_ct_only(tmp_path: Path) -> None:
    mr = StudySpec(series=[SeriesSpec(n_slices=2, series_number=1), SeriesSpec(n_slices=2, series_number=2,
                                                                               series_description="t2_tse_sag",
                                                                               orientation="SAG")])
    ct = StudySpec(series=[SeriesSpec(modality="CT", n_slices=2)])
    mr_files = write_datasets([d for s in mr.series for d in make_series(mr, s)], tmp_path / "mr" / "study")
    ct_files = write_datasets(make_series(ct, ct.series[0]), tmp_path / "ct" / "study")
    mr_result, mr_out = build(tmp_path / "mr", mr_files, workers=1)
    ct_result, ct_out = build(tmp_path / "ct", ct_files, workers=1)
    assert mr_result.warnings == []
    rows = sheet_rows(mr_out, SHEET_MR)
    assert [r["SeriesInstanceUID"].value for r in rows] == [s.series_uid for s in mr.series]
    assert all(r["sequenceClass"].value for r in rows)
    assert SHEET_MR not in load_workbook(ct_out).sheetnames and ct_result.mr_cleaned is None


def test_a_process_pool_scan_gives_the_same_frame_as_a_serial_scan(tmp_path: Path) -> None:
    study = StudySpec(series=[SeriesSpec(n_slices=6, series_number=i + 1) for i in range(3)])
    files = write_datasets([d for s in study.series for d in make_series(study, s)], tmp_path / "study")
    serial, _ = build(tmp_path, files, workers=1)
    parallel = build_workbook(files, tmp_path / "study", tmp_path / "parallel.xlsx", workers=2)
    assert parallel.instances.to_dict(orient="records") == serial.instances.to_dict(orient="records")


def test_a_study_of_unreadable_files_still_gets_a_workbook_with_empty_tables(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    (study / "b.txt").write_text("hello", encoding="utf-8")
    result, out = build(tmp_path, [study / "a.dcm", study / "b.txt"], workers=1)
    assert result.sheets == {SHEET_INSTANCES: 0, SHEET_SERIES: 0}
    assert sorted(result.unreadable) == ["a.dcm", "b.txt"]
    assert load_workbook(out).sheetnames == [SHEET_INSTANCES, SHEET_SERIES]


def test_a_failing_mr_classifier_costs_only_its_sheet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import node.mr_clean

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("rule table corrupt")

    monkeypatch.setattr(node.mr_clean, "process_mri_dataframe", broken)
    study = StudySpec(series=[SeriesSpec(n_slices=2)])
    files = write_datasets(make_series(study, study.series[0]), tmp_path / "study")
    result, out = build(tmp_path, files, workers=1)
    assert result.warnings == ["MR_CLEAN_FAILED: RuntimeError: rule table corrupt; no MR_Cleaned sheet"]
    assert load_workbook(out).sheetnames == [SHEET_INSTANCES, SHEET_SERIES]
    assert result.sheets[SHEET_INSTANCES] == 2




def test_enhanced_mr_parameters_are_read_from_the_functional_groups(tmp_path: Path) -> None:
    files = [enhanced_mr(tmp_path / "study", False), enhanced_mr(tmp_path / "study", True)]
    result, out = build(tmp_path, files, workers=1)
    for row in sheet_rows(out, SHEET_INSTANCES):
        assert row["Repetition Time (ms)"].value == 5.2
        assert row["Flip Angle (deg)"].value == 12
        assert row["Echo Time (ms)"].value == "2.1\\4.5"  # per-frame values, distinct, in frame order
        assert row["Pixel Spacing (mm)"].value == "0.5\\0.5"
        assert row["Image Orientation (Patient)"].value == "1\\0\\0\\0\\1\\0"
        assert row["Echo Train Length"].value == 1
        assert row["Row Flags"].value is None
    assert result.instances["RepetitionTime"].tolist() == [5.2, 5.2]


@pytest.mark.parametrize(
    ("iop", "label"),
    [
        (oblique_iop(10), "AX"),
        (oblique_iop(15), "AX"),
        (oblique_iop(30), "OBL"),  # more than ~18 degrees from every axis, as MR_Cleaned says
        ((0.0, 1.0, 0.0, 0.0, 0.0, -1.0), "SAG"),
        ((1.0, 0.0, 0.0, 0.0, 0.0, -1.0), "COR"),
        ((1.0, 0.0), ""),
    ],
)
def test_the_orientation_label_follows_the_dominant_axis_of_the_slice_normal(iop: tuple[float, ...],
                                                                              label: str) -> None:
    assert orientation_label(list(iop)) == label
