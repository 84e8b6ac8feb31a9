"""Series_Summary: one row per series (counts, geometry, the node-wide facts), joined with the NIfTI outcomes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from node.dicom import facts
from node.process.outputs import SeriesOutcome
from node.process.qc import QcConfig, geometry_flags
from node.process.workbook.scan import ROW_FLAGS
from node.process.workbook.writer import LINK, Column

SERIES_COLUMNS: tuple[Column, ...] = (
    Column("Series Number", "SeriesNumber", "IS"),
    Column("Series Instance UID", "SeriesInstanceUID", "UI"),
    Column("Modality", "Modality", "CS"),
    Column("Series Description", "SeriesDescription", "LO"),
    Column("Protocol Name", "ProtocolName", "LO"),
    Column("Instances", "Instances"),
    Column("Image Type", "ImageType", "CS"),
    Column("Derived", "Derived"),
    Column("Localizer", "Localizer"),
    Column("Orientation", "Orientation"),
    Column("Matrix", "Matrix"),
    Column("Pixel Spacing (mm)", "PixelSpacing"),
    Column("Slice Thickness (mm)", "SliceThickness"),
    Column("Slice Spacing (mm)", "SliceSpacing"),
    Column("Positions", "Positions"),
    Column("Frames", "Frames"),
    Column("Volumes", "Volumes"),
    Column("NIfTI Files", "NiftiFiles", LINK),
    Column("NIfTI Status", "NiftiStatus"),
    Column("Warnings", "Warnings"),
    Column("Reasons", "Reasons"),
    Column("Patient ID", "PatientID", "LO"),
    Column("Accession Number", "AccessionNumber", "SH"),
    Column("Study Date", "StudyDate", "DA"),
    Column("File Count", "FileCount"),
    Column("Previews", "Previews", LINK),
    Column("Low Quality", "Low_quality"),
    Column("Low Quality Reason", "Low_quality_reason"),
)

def _as_list(value: Any) -> list[Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _distinct(values: Sequence[Any]) -> list[Any]:
    """Distinct values in first-seen order (lists compared by content); linear, series can be 10,000 long."""
    seen: set[Any] = set()
    out: list[Any] = []
    for v in values:
        key = _hashable(v)
        if key in seen:
            continue
        seen.add(key)
        out.append(v)
    return out


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return value if isinstance(value, str | int | float | None) else repr(value)


def orientation_label(iop: list[Any]) -> str:
    """AX, SAG, COR or OBL (node.dicom.facts decides, as for MR_Cleaned); "" without a usable IOP."""
    label, _ = facts.orientation(iop)
    return "" if label is facts.Orientation.UNKNOWN else label.value


def _normal(iop: list[Any]) -> tuple[float, float, float] | None:
    return facts.slice_normal(iop) if len(iop) == 6 and all(isinstance(v, int | float) for v in iop) else None


_NOT_ORIGINAL = (facts.Derivation.DERIVED, facts.Derivation.SECONDARY)


def _uniform(values: list[Any]) -> Any:
    distinct = _distinct([v for v in values if v is not None and v != []])
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else "mixed"


def _summarise_series(series_uid: str, group: pd.DataFrame, outcome: SeriesOutcome | None,
                      qc: QcConfig | None = None) -> dict[str, Any]:
    first = group.iloc[0]
    image_types = [[str(v).upper() for v in _as_list(t)] for t in group["ImageType"]] if "ImageType" in group else []
    warnings: list[str] = []
    reasons: list[str] = []
    names = " ".join(str(first.get(k) or "") for k in ("SeriesDescription", "ProtocolName"))
    derivations = [facts.derivation(tuple(t), names) for t in _distinct(image_types)] or [facts.derivation((), names)]
    kind, derived_why = next(((k, w) for k, w in derivations if k in _NOT_ORIGINAL), derivations[0])
    iops = [_as_list(v) for v in group.get("ImageOrientationPatient", pd.Series([None] * len(group)))]
    labels = _distinct([orientation_label(v) for v in iops if v])
    localizer_why = facts.localizer(sorted({v for t in image_types for v in t}), names, facts.planes(iops))
    if kind in _NOT_ORIGINAL:
        reasons.append(f"derived: {derived_why}")
    if localizer_why:
        reasons.append(f"localizer: {localizer_why}")

    matrices = _distinct([
        f"{r}x{c}" for r, c in zip(group.get("Rows", []), group.get("Columns", []), strict=False) if r and c
    ])
    if len(matrices) > 1:
        warnings.append(f"MIXED_MATRIX: {', '.join(str(m) for m in matrices)}")
    positions, spacing = _positions_and_spacing(iops, [_as_list(v) for v in group.get("ImagePositionPatient", [])])
    frames = sum(int(f) if isinstance(f, int | float) and not math.isnan(f) and f > 0 else 1
                 for f in group.get("NumberOfFrames", pd.Series([1] * len(group))))
    charset_rows = sum(
        1 for flags in group[ROW_FLAGS] if any(str(f).startswith("CHARSET_FALLBACK") for f in _as_list(flags))
    )
    if charset_rows:
        warnings.append(f"CHARSET_FALLBACK: {charset_rows} instance(s) decoded by fallback (see Row Flags)")
    status = ""
    if outcome is not None:
        warnings.extend(outcome.warnings)
        if outcome.error:
            status = f"error: {outcome.error}"
        elif outcome.skipped_reason:
            status = f"skipped: {outcome.skipped_reason}"
        else:
            status = "written" if outcome.volumes or outcome.files else "nothing written"
    pixel_spacing = _uniform([_as_list(v) for v in group.get("PixelSpacing", [])])
    low_quality: list[str] | None = None
    if qc is not None and qc.enabled:
        along = _along(iops, [_as_list(v) for v in group.get("ImagePositionPatient", [])])
        low_quality = geometry_flags(len(group), along, qc.for_modality(first.get("Modality")), bool(localizer_why))
        low_quality += list(outcome.qc_flags) if outcome is not None else []
    return {
        "SeriesNumber": first.get("SeriesNumber"),
        "SeriesInstanceUID": series_uid,
        "Modality": first.get("Modality"),
        "SeriesDescription": first.get("SeriesDescription"),
        "ProtocolName": first.get("ProtocolName"),
        "Instances": len(group),
        "ImageType": _as_list(first.get("ImageType")) or None,
        "Derived": "yes" if kind in _NOT_ORIGINAL else "no",
        "Localizer": "yes" if localizer_why else "no",
        "Orientation": labels[0] if len(labels) == 1 else ("mixed: " + ", ".join(labels) if labels else None),
        "Matrix": matrices[0] if len(matrices) == 1 else ("mixed" if matrices else None),
        "PixelSpacing": pixel_spacing,
        "SliceThickness": _uniform(list(group.get("SliceThickness", []))),
        "SliceSpacing": spacing,
        "Positions": positions,
        "Frames": frames,
        "Volumes": outcome.volumes if outcome is not None else None,
        "NiftiFiles": "; ".join(outcome.files) if outcome is not None and outcome.files else None,
        "NiftiStatus": status or None,
        "Warnings": "; ".join(warnings) or None,
        "Reasons": "; ".join(reasons) or None,
        "PatientID": first.get("PatientID"),
        "AccessionNumber": first.get("AccessionNumber"),
        "StudyDate": first.get("StudyDate"),
        "FileCount": int(group["File"].nunique()) if "File" in group else len(group),
        "Previews": "; ".join(outcome.previews) if outcome is not None and outcome.previews else None,
        "Low_quality": None if low_quality is None else ("yes" if low_quality else "no"),
        "Low_quality_reason": "; ".join(low_quality) if low_quality else None,
    }


def _along(iops: list[list[Any]], ipps: list[list[Any]]) -> list[float] | None:
    """Every instance's position along the series' one slice normal (None: no single orientation)."""
    normals = _distinct([n for n in (_normal(v) for v in iops) if n is not None])
    if len(normals) != 1:
        return None
    n = normals[0]
    return [sum(float(p[i]) * n[i] for i in range(3)) for p in ipps
            if len(p) == 3 and all(isinstance(v, int | float) for v in p)]


def _positions_and_spacing(iops: list[list[Any]], ipps: list[list[Any]]) -> tuple[int | None, float | None]:
    """Distinct slice positions along the normal and their median gap (mm), for single-orientation series."""
    normals = _distinct([n for n in (_normal(v) for v in iops) if n is not None])
    points = [p for p in ipps if len(p) == 3 and all(isinstance(v, int | float) for v in p)]
    if not points:
        return None, None
    if len(normals) != 1:
        return len(_distinct(points)), None
    n = normals[0]
    along = sorted({round(sum(float(p[i]) * n[i] for i in range(3)), 3) for p in points})
    gaps = sorted(b - a for a, b in itertools.pairwise(along))
    spacing = round(gaps[len(gaps) // 2], 3) if gaps else None
    return len(along), spacing


def summarise_series(instances: pd.DataFrame, outcomes: Mapping[str, SeriesOutcome] | None = None,
                     qc: QcConfig | None = None) -> pd.DataFrame:
    """One row per series (in instance-table order), joined with the NIfTI step's outcomes; with qc, the
    Low_quality flags (positions and counts here, pixel flags from the NIfTI step)."""
    rows = []
    if not instances.empty:
        keys = instances["SeriesInstanceUID"].fillna("(missing)").astype(str)
        for series_uid in dict.fromkeys(keys):
            group = instances[keys == series_uid]
            rows.append(_summarise_series(series_uid, group, (outcomes or {}).get(series_uid), qc))
    seen = {r["SeriesInstanceUID"] for r in rows}
    for series_uid, outcome in (outcomes or {}).items():
        if series_uid not in seen:
            # The NIfTI step knows a series the header scan did not read: show it rather than lose it.
            rows.append({
                "SeriesInstanceUID": series_uid,
                "Instances": 0,
                "Volumes": outcome.volumes,
                "NiftiFiles": "; ".join(outcome.files) or None,
                "NiftiStatus": f"error: {outcome.error}" if outcome.error else outcome.skipped_reason,
                "Warnings": "; ".join(("NO_HEADERS: no readable instance in the metadata scan", *outcome.warnings)),
            })
    return pd.DataFrame(rows, columns=[c.key for c in SERIES_COLUMNS])
