"""One workbook for a whole request (`outputs: [excel_merged]`): each sheet of every study's metadata.xlsx, stacked."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openpyxl import load_workbook

from node.process.workbook.writer import Column, Table, write_workbook

log = logging.getLogger(__name__)

SHEETS = ("DICOM_Metadata", "Series_Summary", "MR_Cleaned")
STUDY_COLUMN = "Study Folder"


def merge_workbooks(sources: Sequence[tuple[str, Path]], out_path: Path) -> dict[str, int]:
    """Stack the sheets of (folder name, metadata.xlsx) pairs into out_path; the first column says which study a
    row comes from, columns are the union of every study's (first-seen order). Returns the data rows per sheet."""
    started = time.monotonic()
    headers: dict[str, list[str]] = {s: [STUDY_COLUMN] for s in SHEETS}
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SHEETS}
    for folder, path in sources:
        wb = load_workbook(path, read_only=True, data_only=True)
        try:
            for sheet in SHEETS:
                if sheet not in wb.sheetnames:
                    continue
                it = wb[sheet].iter_rows(values_only=True)
                header = [str(h) for h in next(it, ()) if h is not None]
                for name in header:
                    if name not in headers[sheet]:
                        headers[sheet].append(name)
                for values in it:
                    record = dict(zip(header, values, strict=False))
                    record[STUDY_COLUMN] = folder
                    rows[sheet].append(record)
        finally:
            wb.close()
    tables = [Table(sheet, [Column(h, h) for h in headers[sheet]], rows[sheet]) for sheet in SHEETS if rows[sheet]]
    sheets, _warnings = write_workbook(out_path, tables)
    log.info("Merged workbook %s: %d stud(ies), %s, %.1f s", out_path.name, len(sources),
             ", ".join(f"{k} {v}" for k, v in sheets.items()), time.monotonic() - started)
    return sheets
