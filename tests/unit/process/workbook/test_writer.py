"""Excel cell conversion and sheet writing: typed dates, text kept text, escapes, truncation, spills."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
from openpyxl import load_workbook

from node.process.workbook.writer import (
    EXCEL_MAX_CELL_CHARS,
    Column,
    Table,
    cell_value,
    escape_illegal,
    parse_da,
    parse_dt,
    parse_tm,
    spill_names,
    write_workbook,
)


@pytest.mark.parametrize(
    ("value", "vr", "expected"),
    [
        ("20250115", "DA", datetime.date(2025, 1, 15)),
        ("20251301", "DA", "20251301"),  # invalid month: kept as the DICOM text
        ("18991231", "DA", "18991231"),  # Excel has no dates before 1900
        ("101500.25", "TM", datetime.time(10, 15, 0, 250000)),
        ("10:15:30", "TM", datetime.time(10, 15, 30)),
        ("1015", "TM", datetime.time(10, 15)),
        ("235960", "TM", datetime.time(23, 59, 59)),  # leap second clamped
        ("20250115101500.5+0100", "DT", datetime.datetime(2025, 1, 15, 10, 15, 0, 500000)),  # noqa: DTZ001
        (["ORIGINAL", "PRIMARY", "M", "ND"], "CS", "ORIGINAL\\PRIMARY\\M\\ND"),
        ([0.9, 0.8], "DS", "0.9\\0.8"),
        ([1.0, 0.0, 0.0], "DS", "1\\0\\0"),
        ([7], "IS", 7),
        (12345678901234567890, "IS", "12345678901234567890"),  # beyond Excel's 15 digits: exact text
        (float("nan"), "DS", "nan"),
        ("0012345", "LO", "0012345"),
        (None, "LO", None),
        (np.int64(3), "IS", 3),
        (np.bool_(True), None, True),
    ],
)
def test_raw_values_become_typed_excel_values(value: object, vr: str, expected: object) -> None:
    assert cell_value(value, vr) == expected


def test_control_characters_are_escaped_and_long_text_is_truncated_with_a_mark() -> None:
    assert escape_illegal("a\x00b\x1bc\ufffe") == "a\\x00b\\x1bc\\xfffe"
    long = escape_illegal("x" * (EXCEL_MAX_CELL_CHARS + 10))
    assert len(long) == EXCEL_MAX_CELL_CHARS and long.endswith("…[truncated]")


def test_dicom_date_time_parsers_reject_garbage() -> None:
    assert parse_da("2025-01-15") is None and parse_tm("25") is None and parse_dt("2025x") is None
    assert parse_dt("2025") == datetime.datetime(2025, 1, 1)  # noqa: DTZ001


def test_spilled_sheet_names_fit_excels_31_characters() -> None:
    assert spill_names("DICOM_Metadata", 10, max_rows=4) == ["DICOM_Metadata", "DICOM_Metadata_2", "DICOM_Metadata_3",
                                                              "DICOM_Metadata_4"]
    assert all(len(n) <= 31 for n in spill_names("X" * 40, 5, max_rows=2))


def test_a_written_sheet_reads_back_with_text_formulas_and_types_intact(tmp_path: Path) -> None:
    columns = [Column("Text", "t"), Column("Date", "d", "DA"), Column("Number", "n", "DS")]
    rows: list[dict[str, object]] = [{"t": "=1+1", "d": "20250115", "n": 2.5}, {"t": "名前", "d": None, "n": [1.0, 2.0]}]
    out = tmp_path / "t.xlsx"
    sheets, warnings = write_workbook(out, [Table("T", columns, rows)])
    assert (sheets, warnings) == ({"T": 2}, [])
    ws = load_workbook(out)["T"]
    assert [c.value for c in ws[1]] == ["Text", "Date", "Number"]
    assert (ws["A2"].value, ws["A2"].data_type) == ("=1+1", "s")
    assert ws["B2"].value == datetime.datetime(2025, 1, 15)  # noqa: DTZ001 - Excel dates are naive
    assert (ws["C2"].value, ws["A3"].value, ws["B3"].value, ws["C3"].value) == (2.5, "名前", None, "1\\2")
    assert not list(tmp_path.glob("*.tmp"))
