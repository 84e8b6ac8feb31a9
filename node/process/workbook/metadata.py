"""Per-study metadata workbook: header scan -> DICOM_Metadata, Series_Summary and MR_Cleaned sheets -> metadata.xlsx."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from node.process.outputs import SeriesOutcome
from node.process.qc import QcConfig
from node.process.workbook.scan import (
    IDENTIFYING,
    MR_CLEAN_KEYWORDS,
    MR_CLEAN_PRIVATE_KEYS,
    ROW_FLAGS,
    _instances_frame,
    _keyword_attribute,
    _scan,
)
from node.process.workbook.summary import SERIES_COLUMNS, _as_list, summarise_series
from node.process.workbook.templates import TemplateSet, load_templates
from node.process.workbook.writer import Column, Table, write_workbook

log = logging.getLogger(__name__)

SHEET_INSTANCES = "DICOM_Metadata"
SHEET_SERIES = "Series_Summary"
SHEET_MR = "MR_Cleaned"
MR_CLEAN_MODULE = "node.mr_clean"
MR_CLEAN_ENTRY = "process_mri_dataframe"


@dataclass
class WorkbookResult:
    """What build_workbook wrote: sheets with data-row counts, warnings, and the frames behind the sheets."""

    path: Path
    sheets: dict[str, int]
    warnings: list[str]
    instances: pd.DataFrame  # raw per-instance frame keyed by DICOM keyword (lists for multi-valued values)
    series: pd.DataFrame  # Series_Summary as written
    mr_cleaned: pd.DataFrame | None = None
    unreadable: list[str] = field(default_factory=list)  # files (relative to the study) that were not DICOM
    seconds: float = 0.0


def instance_columns(instances: pd.DataFrame, templates: TemplateSet) -> list[Column]:
    """DICOM_Metadata columns: identifying ones, then the templates of the modalities present, then flags."""
    columns = [Column(name, key, None if key == "File" else _keyword_attribute(key).vr) for key, name in IDENTIFYING]
    used_keys = {c.key for c in columns}
    used_names = {c.name for c in columns}
    modalities = list(dict.fromkeys(str(m) for m in instances.get("Modality", pd.Series(dtype=object)).fillna("")))
    for template in dict.fromkeys(templates.for_modality(m) for m in modalities):
        for attribute in template.attributes:
            if attribute.key in used_keys:
                continue
            name = attribute.column
            if name in used_names:
                name = f"{name} [{attribute.key}]"
            columns.append(Column(name, attribute.key, attribute.vr))
            used_keys.add(attribute.key)
            used_names.add(name)
    columns.append(Column("Row Flags", ROW_FLAGS))
    return columns


def _run_mr_clean(instances: pd.DataFrame, config: Path | dict[str, Any] | None) -> tuple[pd.DataFrame | None, list[str]]:
    mr = instances[instances["Modality"].astype(str).str.upper() == "MR"] if not instances.empty else instances
    if mr.empty:
        return None, []
    # Only the columns of the MR_clean contract: the classifier does not need the display-only ones.
    wanted = ("StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "Modality", "InstanceNumber", *MR_CLEAN_KEYWORDS,
              *MR_CLEAN_PRIVATE_KEYS)
    mr = mr[[c for c in dict.fromkeys(wanted) if c in mr.columns]]
    try:
        # Imported late: the workbook must still be written when the MR package is missing or broken.
        process_mri_dataframe = getattr(importlib.import_module(MR_CLEAN_MODULE), MR_CLEAN_ENTRY)
    except (ImportError, AttributeError) as exc:
        msg = f"MR_CLEAN_UNAVAILABLE: node.mr_clean could not be imported ({exc}); no {SHEET_MR} sheet"
        log.warning("%s", msg)
        return None, [msg]
    try:
        if isinstance(config, dict):
            result = process_mri_dataframe(mr.reset_index(drop=True), cfg=config)
        else:
            result = process_mri_dataframe(mr.reset_index(drop=True), config_path=config)
    except Exception as exc:
        # One failing classifier must not cost the study its workbook: report it and write the rest.
        log.exception("MR_clean failed on %d MR instances", len(mr))
        return None, [f"MR_CLEAN_FAILED: {type(exc).__name__}: {exc}; no {SHEET_MR} sheet"]
    return pd.DataFrame(result), []


def _one_per_series(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """CT and MR rows reduced to the first instance (lowest InstanceNumber) of each series, in first-seen order."""
    first: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any] | str] = []
    for row in rows:
        if str(row.get("Modality") or "").upper() not in ("CT", "MR"):
            out.append(row)
            continue
        uid = str(row.get("SeriesInstanceUID") or "")
        best = first.get(uid)
        if best is None:
            first[uid] = row
            out.append(uid)
        elif _instance_number(row) < _instance_number(best):
            first[uid] = row
    return [first[r] if isinstance(r, str) else r for r in out]


def _instance_number(row: dict[str, Any]) -> float:
    try:
        return float(row.get("InstanceNumber"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("inf")


def _frame_table(name: str, frame: pd.DataFrame) -> Table:
    columns = [Column(str(c), str(c)) for c in frame.columns]
    records = [
        {str(k): (None if _is_missing(v) else v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")
    ]
    return Table(name, columns, records)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _display_row(row: dict[str, Any]) -> dict[str, Any]:
    flags = row.get(ROW_FLAGS)
    return {**row, ROW_FLAGS: "; ".join(flags) if flags else None}


def build_workbook(
    files: Sequence[Path],
    study_root: Path,
    out_path: Path,
    series_outcomes: Mapping[str, SeriesOutcome] | None = None,
    *,
    templates_dir: Path | None = None,
    mr_clean_config: Path | dict[str, Any] | None = None,
    workers: int | None = None,
    max_rows: int | None = None,
    qc: QcConfig | None = None,
    headers: str = "label",
    metadata_rows: str = "instance",
) -> WorkbookResult:
    """Scan the study's headers and write metadata.xlsx (DICOM_Metadata, Series_Summary, MR_Cleaned if MR).

    Unreadable or non-DICOM files become warnings. max_rows (default: Excel's limit) is where a sheet spills.
    headers "keyword" heads every column with its DICOM keyword (or row key) instead of its label.
    metadata_rows "series" keeps one DICOM_Metadata row per CT or MR series (its first instance), as the
    project this node replaces did; other modalities keep a row per instance.
    """
    started = time.perf_counter()
    templates = load_templates(templates_dir)
    rows, warnings = _scan(files, study_root, templates, workers, fast_reader=True)
    scanned = time.perf_counter()
    instances = _instances_frame(rows)
    unreadable = [w.split(": ", 2)[1] for w in warnings if w.startswith("UNREADABLE: ")]
    fallback_rows = sum(
        1 for flags in instances[ROW_FLAGS] if any(str(f).startswith("CHARSET_FALLBACK") for f in _as_list(flags))
    )
    if fallback_rows:
        warnings.append(
            f"CHARSET_FALLBACK: {fallback_rows} instance(s) had text decoded by the fallback rule (see Row Flags)"
        )
    series = summarise_series(instances, series_outcomes, qc)
    mr_cleaned, mr_warnings = _run_mr_clean(instances, mr_clean_config)
    warnings.extend(mr_warnings)
    summarised = time.perf_counter()

    tables = [
        Table(SHEET_INSTANCES, instance_columns(instances, templates),
              [_display_row(r) for r in (_one_per_series(rows) if metadata_rows == "series" else rows)]),
        Table(SHEET_SERIES, SERIES_COLUMNS, [
            {str(k): (None if not isinstance(v, list) and _is_missing(v) else v) for k, v in rec.items()}
            for rec in series.to_dict(orient="records")
        ]),
    ]
    if mr_cleaned is not None:
        tables.append(_frame_table(SHEET_MR, mr_cleaned))
    if headers == "keyword":
        tables = [dataclasses.replace(t, columns=tuple(dataclasses.replace(c, name=c.key) for c in t.columns))
                  for t in tables]
    kwargs = {"max_rows": max_rows} if max_rows is not None else {}
    sheets, write_warnings = write_workbook(out_path, tables, **kwargs)
    warnings.extend(write_warnings)
    done = time.perf_counter()
    seconds = done - started
    log.info(
        "metadata workbook: %d instances, %d series, %d warnings, %.1f s (scan %.1f, summaries %.1f, write %.1f)",
        len(instances), len(series), len(warnings), seconds, scanned - started, summarised - scanned, done - summarised,
    )
    return WorkbookResult(out_path, sheets, warnings, instances, series, mr_cleaned, unreadable, seconds)
