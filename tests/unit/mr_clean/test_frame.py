"""MR_clean input contract: instance or series rows, any column missing, junk values, stable output."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pydicom.multival import MultiValue
from pydicom.valuerep import DSfloat

from node.mr_clean import OUTPUT_COLUMNS, make_record, process_mri_dataframe, records_from_frame
from node.mr_clean.record import to_float, to_time, to_tokens, to_vector
from tests.support.mr_studies import breast_dce, frame
from toolkit.dicomgen import multi_series_study


def test_output_has_the_contract_columns_in_order_and_one_row_per_series():
    df = frame(breast_dce())
    out = process_mri_dataframe(df)
    assert tuple(out.columns) == OUTPUT_COLUMNS
    assert len(out) == df["SeriesInstanceUID"].nunique() == 13
    assert out["isFatSuppressed"].dtype == bool and out["isContrastEnhanced"].dtype == bool
    assert all(isinstance(e, str) and "sequenceClass: " in e for e in out["evidence"])


def test_instance_rows_and_series_rows_give_the_same_result():
    df = frame(breast_dce())
    per_series = df.sort_values("InstanceNumber").groupby("SeriesInstanceUID", sort=False).head(1)
    per_series = per_series.drop(columns=["DiffusionBValue"]).merge(
        df.groupby("SeriesInstanceUID")["DiffusionBValue"].max().reset_index(), on="SeriesInstanceUID"
    )
    a = process_mri_dataframe(df).drop(columns=["evidence"])
    b = process_mri_dataframe(per_series).drop(columns=["evidence"])
    pd.testing.assert_frame_equal(a, b)


def test_row_order_of_the_input_does_not_change_the_output():
    df = pd.concat([frame(breast_dce()), frame(multi_series_study(5, 3))], ignore_index=True)
    a = process_mri_dataframe(df)
    b = process_mri_dataframe(df.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(a, b)
    assert a["StudyInstanceUID"].is_monotonic_increasing


def test_non_mr_rows_are_ignored_and_an_all_ct_frame_gives_an_empty_result():
    ct = frame(multi_series_study(2, 3, modality="CT"))
    mr = frame(multi_series_study(3, 3))
    assert len(process_mri_dataframe(pd.concat([ct, mr]))) == 3
    empty = process_mri_dataframe(ct)
    assert empty.empty and tuple(empty.columns) == OUTPUT_COLUMNS
    assert process_mri_dataframe(pd.DataFrame()).empty


def test_a_frame_with_only_a_description_column_is_classified_by_name():
    out = process_mri_dataframe(pd.DataFrame({"SeriesDescription": ["t2_tse_cor", "t2_tse_cor", "Ax DWI b800"]}))
    assert out["sequenceClass"].tolist() == ["T2_TSE", "DWI"]
    assert out["standardOrientation"].tolist() == ["COR", "AX"]
    assert out["SeriesInstanceUID"].tolist() == ["", ""]


def test_junk_values_of_every_kind_do_not_break_the_frame():
    rows = [
        {"SeriesInstanceUID": "1", "SeriesDescription": None, "RepetitionTime": "abc", "EchoTime": float("nan"),
         "ImageOrientationPatient": "", "ImageType": float("nan"), "MagneticFieldStrength": "3T", "SeriesNumber": "x",
         "InstanceNumber": None, "SeriesTime": "junk", "EchoNumbers": "two", "DiffusionBValue": "b800"},
        {"SeriesInstanceUID": "2", "SeriesDescription": 42, "ImageOrientationPatient": [1, 0, "x", 0, 1, 0],
         "ImageType": ["ORIGINAL", None, "M"], "RepetitionTime": [500, 600], "EchoTime": "10\\20", "SeriesNumber": 2.0,
         "ScanningSequence": MultiValue(str, ["SE"]), "EchoTrainLength": np.int64(3), "FlipAngle": np.float32(90),
         "MagneticFieldStrength": DSfloat("1.5")},
        {"SeriesInstanceUID": float("nan"), "SeriesDescription": "t1_tse_tra", "StudyInstanceUID": None},
    ]
    out = process_mri_dataframe(pd.DataFrame(rows))
    assert len(out) == 3
    by_uid = out.set_index("SeriesInstanceUID")
    assert by_uid.loc["1", "sequenceClass"] == "UNKNOWN"
    assert by_uid.loc["1", "standardFieldStrength"] == "UNKNOWN"
    assert by_uid.loc["2", "sequenceClass"] == "T1_TSE"
    assert by_uid.loc["2", "standardFieldStrength"] == "1.5T"
    assert by_uid.loc["2", "SeriesNumber"] == 2
    assert by_uid.loc["", "sequenceClass"] == "T1_TSE"


def test_series_level_values_are_reduced_over_instances():
    rows = [
        {"SeriesInstanceUID": "9", "InstanceNumber": n, "DiffusionBValue": b, "EchoNumbers": e,
         "AcquisitionTime": t, "ImageType": "ORIGINAL\\PRIMARY\\M\\ND", "SeriesDescription": "x"}
        for n, b, e, t in [(3, 1000, 2, "101503"), (1, 0, 2, "101501.5"), (2, None, 2, "10:15:02")]
    ]
    (rec,) = records_from_frame(pd.DataFrame(rows))
    assert rec.max_b_value == 1000
    assert rec.echo_numbers == (2,)
    assert rec.acquisition_time == pytest.approx(101501.5)
    assert rec.n_instances == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.5, 1.5), ("1.5", 1.5), (" 3 ", 3.0), ("3T", None), ("", None), (None, None), (float("nan"), None),
     (math.inf, None), ([2.0, 3.0], 2.0), ("4\\5", 4.0), (True, None), (np.float64(2.5), 2.5), (DSfloat("7"), 7.0)],
)
def test_to_float_accepts_numbers_and_numeric_strings_only(value, expected):
    assert to_float(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [([1, 0, 0, 0, 1, 0], (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)), ("1\\0\\0\\0\\1\\0", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
     ("[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)), ("", None), ([1, 0, 0], None),
     ("1\\0\\0\\0\\1\\zero", None), (float("nan"), None), (np.array([0, 1, 0, 0, 0, -1]), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0))],
)
def test_to_vector_parses_iop_in_every_shape(value, expected):
    assert to_vector(value, 6) == expected


def test_tokens_and_times_parse_dicom_and_stringified_values():
    assert to_tokens("ORIGINAL\\PRIMARY\\M\\ND") == ("ORIGINAL", "PRIMARY", "M", "ND")
    assert to_tokens("['DERIVED', 'PRIMARY', 'DIXON', 'WATER']") == ("DERIVED", "PRIMARY", "DIXON", "WATER")
    assert to_tokens(MultiValue(str, ["gr", "ir"])) == ("GR", "IR")
    assert to_tokens(None) == () and to_tokens("SE") == ("SE",)
    assert to_time("101500.25") == 101500.25 and to_time("10:15:00") == 101500.0 and to_time("junk") is None


def test_make_record_tolerates_an_empty_mapping():
    rec = make_record({})
    assert rec.names == "" and rec.iop is None and rec.n_instances == 1


def test_real_vendor_headers_from_the_pydicom_test_files_are_classified():
    import pydicom
    from pydicom.data import get_testdata_file

    from tests.support.mr_studies import COLUMNS

    rows = []
    for name in ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR2_UNCR.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        assert path is not None, f"{name} missing: pydicom / pydicom-data test files are required"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows.append({k: ds.get(k) for k in COLUMNS})
    out = process_mri_dataframe(pd.DataFrame(rows)).set_index("standardManufacturer")
    cols = ["sequenceClass", "standardFieldStrength", "cleanedModelName", "isFatSuppressed", "isContrastEnhanced"]
    got = {vendor: tuple(out.loc[vendor, c] for c in cols) for vendor in out.index}
    assert got == {
        # Siemens Avanto MPR of "t1_vibe_fs_tra_bh_dyn": ScanOptions FS, agent "11 ml Omniscan".
        "Siemens": ("T1_GRE_SPOILED", "1.5T", "Avanto", True, True),
        # Philips "T1W/SE/1024", TR 350 TE 27 at 1.5 T.
        "Philips": ("T1_SE", "1.5T", "T5", False, False),
        # Toshiba (Canon) TR 4000 TE 240, no field strength in the header.
        "Canon": ("T2_SE", "UNKNOWN", "MRT50H1", False, False),
    }
