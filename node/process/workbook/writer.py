"""Excel writing for the metadata workbook: typed cells, text kept as text, frozen header, row-limit spills."""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

log = logging.getLogger(__name__)

EXCEL_MAX_ROWS = 1_048_576  # including the header row
EXCEL_MAX_CELL_CHARS = 32_767
MAX_SHEET_NAME = 31
MULTI_VALUE_SEPARATOR = "\\"
TRUNCATION_MARK = "…[truncated]"

# XML 1.0 refuses these code points; openpyxl raises IllegalCharacterError on the C0 ones.
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")
_EXCEL_EPOCH = datetime.date(1900, 3, 1)  # Excel's 1900 leap-year bug makes earlier serials ambiguous

_WIDTH_SAMPLE_ROWS = 200
_MIN_WIDTH = 8
_MAX_WIDTH = 60


@dataclass(frozen=True)
class Column:
    """One sheet column: header text, the row key it reads, and the DICOM VR used to type its cells."""

    name: str
    key: str
    vr: str | None = None


@dataclass(frozen=True)
class Table:
    """One logical table; it becomes one sheet, or several when it exceeds Excel's row limit."""

    name: str
    columns: Sequence[Column]
    rows: Sequence[Mapping[str, object]]


def escape_illegal(text: str) -> str:
    """Replace characters Excel/XML refuse by a visible escape like \\x01, and cap the cell length."""
    if _ILLEGAL_XML.search(text):
        text = _ILLEGAL_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > EXCEL_MAX_CELL_CHARS:
        text = text[: EXCEL_MAX_CELL_CHARS - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def parse_da(text: str) -> datetime.date | None:
    """A DICOM DA value as a date, None when it is not a valid YYYYMMDD date Excel can show."""
    m = _DA.fullmatch(text.strip())
    if not m:
        return None
    try:
        value = datetime.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None
    return value if value >= _EXCEL_EPOCH else None


def parse_tm(text: str) -> datetime.time | None:
    """A DICOM TM value (HHMMSS.FFFFFF, or the old HH:MM:SS form) as a time, None when invalid."""
    m = _TM.fullmatch(text.strip())
    if not m:
        return None
    try:
        micro = int((m[4] or "0").ljust(6, "0"))
        # A leap second (60) is legal DICOM but not a Python time: clamp it rather than drop the value.
        return datetime.time(int(m[1]), int(m[2] or 0), min(int(m[3] or 0), 59), micro)
    except ValueError:
        return None


def parse_dt(text: str) -> datetime.datetime | None:
    """A DICOM DT value as a naive datetime in the wall-clock time it was recorded in (offset dropped)."""
    m = _DT.fullmatch(text.strip())
    if not m:
        return None
    try:
        day = datetime.date(int(m[1]), int(m[2] or 1), int(m[3] or 1))
        clock = datetime.time(int(m[4] or 0), int(m[5] or 0), min(int(m[6] or 0), 59), int((m[7] or "0").ljust(6, "0")))
    except ValueError:
        return None
    if day < _EXCEL_EPOCH:
        return None
    return datetime.datetime.combine(day, clock)


def _text(value: object) -> str:
    return _format_number(value) if isinstance(value, float) else str(value)


def _format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def cell_value(value: object, vr: str | None = None) -> object:
    """The Excel value for one raw value: dates/times typed by VR, lists joined by '\\', text escaped."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()  # numpy scalars from DataFrames: write them as the Python value they hold
    if isinstance(value, list | tuple):
        if not value:
            return None
        if len(value) == 1:
            return cell_value(value[0], vr)
        return escape_illegal(MULTI_VALUE_SEPARATOR.join(_text(v) for v in value))
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Excel keeps 15 significant digits: bigger integers (e.g. a UID-like number) stay exact as text.
        return value if abs(value) < 10**15 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        if isinstance(value, datetime.datetime) and value.tzinfo is not None:
            return value.replace(tzinfo=None)
        return value
    text = value if isinstance(value, str) else str(value)
    if vr == "DA":
        return parse_da(text) or escape_illegal(text)
    if vr == "TM":
        return parse_tm(text) or escape_illegal(text)
    if vr == "DT":
        return parse_dt(text) or escape_illegal(text)
    return escape_illegal(text)


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _column_widths(columns: Sequence[Column], rows: Sequence[Sequence[object]]) -> list[float]:
    widths = [_display_width(c.name) for c in columns]
    for row in rows[:_WIDTH_SAMPLE_ROWS]:
        for i, value in enumerate(row):
            if value is None:
                continue
            if isinstance(value, datetime.datetime):
                length = 19
            elif isinstance(value, datetime.date | datetime.time):
                length = 10
            else:
                length = _display_width(str(value))
            widths[i] = max(widths[i], length)
    return [float(min(max(w + 2, _MIN_WIDTH), _MAX_WIDTH)) for w in widths]


def spill_names(name: str, n_rows: int, max_rows: int = EXCEL_MAX_ROWS) -> list[str]:
    """Sheet names a table of n_rows data rows occupies: name, name_2, name_3, ..."""
    per_sheet = max_rows - 1
    n_sheets = max(1, math.ceil(n_rows / per_sheet))
    names = [name[:MAX_SHEET_NAME]]
    for i in range(2, n_sheets + 1):
        suffix = f"_{i}"
        names.append(name[: MAX_SHEET_NAME - len(suffix)] + suffix)
    return names


def _to_cells(ws: WriteOnlyWorksheet, values: Iterable[object]) -> list[object]:
    out: list[object] = []
    for value in values:
        if isinstance(value, str) and value.startswith("="):
            # openpyxl would store it as a formula; a DICOM value is never a formula.
            cell = WriteOnlyCell(ws, value=value)
            cell.data_type = "s"
            out.append(cell)
        else:
            out.append(value)
    return out


LINK = "LINK"  # a Column "VR" for relative paths of output files: the cell links to the first one


def _linked(ws: WriteOnlyWorksheet, value: object) -> object:
    """A cell of relative output paths ("previews/1_t1.png; ...") that opens the first one when clicked."""
    if not isinstance(value, str) or not value or value.startswith(("/", "\\")) or ":" in value.split(";")[0]:
        return value  # only relative paths inside the study folder become links
    cell = WriteOnlyCell(ws, value=value)
    cell.hyperlink = value.split(";")[0].strip()
    cell.style = "Hyperlink"
    return cell


def _write_sheet(wb: Workbook, name: str, columns: Sequence[Column], rows: Sequence[Sequence[object]]) -> None:
    ws = wb.create_sheet(title=name)
    for i, width in enumerate(_column_widths(columns, rows), start=1):
        ws.column_dimensions[get_column_letter(i)].width = width
    ws.freeze_panes = "A2"
    if columns:
        ws.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{len(rows) + 1}"
    ws.append([escape_illegal(c.name) for c in columns])
    links = [i for i, c in enumerate(columns) if c.vr == LINK]
    for row in rows:
        cells = _to_cells(ws, row)
        for i in links:
            cells[i] = _linked(ws, cells[i])
        ws.append(cells)


def write_workbook(path: Path, tables: Sequence[Table], *, max_rows: int = EXCEL_MAX_ROWS) -> tuple[dict[str, int], list[str]]:
    """Write tables as sheets of one .xlsx (atomically: temp file then rename).

    Returns the data-row count of every sheet written and warnings (one per spilled table).
    """
    if max_rows < 2:
        raise ValueError(f"max_rows must leave room for a header and a row, got {max_rows}")
    wb = Workbook(write_only=True)
    sheets: dict[str, int] = {}
    warnings: list[str] = []
    for table in tables:
        cells = [[cell_value(row.get(c.key), c.vr) for c in table.columns] for row in table.rows]
        names = spill_names(table.name, len(cells), max_rows)
        per_sheet = max_rows - 1
        for i, name in enumerate(names):
            chunk = cells[i * per_sheet : (i + 1) * per_sheet]
            _write_sheet(wb, name, table.columns, chunk)
            sheets[name] = len(chunk)
        if len(names) > 1:
            msg = (
                f"SPILL: sheet {table.name} has {len(cells)} rows, over Excel's {per_sheet} data rows per sheet; "
                f"rows continue in order on {', '.join(names[1:])}"
            )
            log.warning("%s", msg)
            warnings.append(msg)
    tmp = path.with_name(path.name + ".tmp")
    try:
        wb.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sheets, warnings
