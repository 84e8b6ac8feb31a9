"""The frozen per-series record MR_clean classifies, built once from a DICOM-keyword DataFrame."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

_SPLIT = re.compile(r"[\\,\s]+")
_STRIP = "[]()'\" "


def is_missing(value: Any) -> bool:
    """None, NaN/NaT/pd.NA or an empty/whitespace string."""
    if value is None:
        return True
    if isinstance(value, int):
        return False
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value)) if not isinstance(value, list | tuple) else False
    except (TypeError, ValueError):
        return False


def _items(value: Any) -> list[Any]:
    """Multi-valued attribute as a list: list/tuple/MultiValue/ndarray, backslash string, or str(list)."""
    if is_missing(value):
        return []
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        if "\\" not in text and "," not in text and "'" not in text:
            return [text]
        return [p.strip(_STRIP) for p in _SPLIT.split(text) if p.strip(_STRIP)]
    if isinstance(value, Iterable):
        return [v for v in value if not is_missing(v)]
    return [value]


def to_text(value: Any) -> str:
    """Free text (descriptions, names): multi-values joined with a backslash, missing as ''."""
    if is_missing(value):
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip()
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Iterable):
        return "\\".join(str(v).strip() for v in value if not is_missing(v))
    return str(value).strip()


def to_tokens(value: Any) -> tuple[str, ...]:
    """Code-string multi-values (ImageType, ScanningSequence...) as upper-case tokens."""
    return tuple(str(v).strip().upper() for v in _items(value) if str(v).strip())


def to_float(value: Any) -> float | None:
    """A finite float, or None for missing/junk; a multi-value gives its first number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        text = value.strip()
        if "\\" in text:
            text = text.split("\\", 1)[0]
        try:
            f = float(text)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    items = _items(value)
    if items and items[0] is not value:
        return to_float(items[0])
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def to_vector(value: Any, n: int) -> tuple[float, ...] | None:
    """Exactly n finite floats (IOP: 6, IPP: 3), or None."""
    items = _items(value)
    if len(items) != n:
        return None
    out = tuple(to_float(v) for v in items)
    if any(v is None for v in out):
        return None
    return tuple(v for v in out if v is not None)


def to_time(value: Any) -> float | None:
    """DICOM TM (HHMMSS.ffffff, also 'HH:MM:SS') as a sortable HHMMSS.ffffff float."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return to_float(value)
    text = to_text(value).replace(":", "")
    return to_float(text) if text else None


def to_date(value: Any) -> str:
    """DICOM DA as 'YYYYMMDD' or '' (also accepts 'YYYY-MM-DD' and 'YYYY.MM.DD')."""
    text = to_text(value).replace("-", "").replace(".", "")
    return text[:8] if len(text) >= 8 and text[:8].isdigit() else ""


def to_int(value: Any) -> int | None:
    f = to_float(value)
    return int(f) if f is not None and f.is_integer() else None


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """Everything the rules read about one MR series, parsed and typed once (heudiconv SeqInfo style).

    Numbers are None when missing or junk; tokens are upper case; `names` is the lower-cased
    "description | protocol | sequence name" text that every keyword rule searches.
    """

    study_uid: str = ""
    series_uid: str = ""
    series_number: int | None = None
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    image_type: tuple[str, ...] = ()
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    scan_options: tuple[str, ...] = ()
    mr_acquisition_type: str = ""
    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    flip_angle: float | None = None
    echo_train_length: float | None = None
    echo_numbers: tuple[int, ...] = ()
    magnetic_field_strength: float | None = None
    manufacturer: str = ""
    model_name: str = ""
    iop: tuple[float, ...] | None = None
    ipp: tuple[float, ...] | None = None
    slice_thickness: float | None = None
    series_date: str = ""
    series_time: float | None = None
    acquisition_time: float | None = None
    content_time: float | None = None
    contrast_agent: str = ""
    max_b_value: float | None = None
    body_part: str = ""
    n_instances: int = 1
    names: str = ""
    temporal_positions: int | None = None  # volumes of a time series (None: unknown)
    gradient_directions: int | None = None  # distinct non-zero diffusion gradient directions (None: no gradient data)

    @property
    def time_of_day(self) -> float | None:
        """Best available acquisition time: series, else earliest acquisition, else earliest content time."""
        for t in (self.series_time, self.acquisition_time, self.content_time):
            if t is not None:
                return t
        return None


def names_text(*parts: str) -> str:
    return " | ".join(p for p in parts if p).lower()


def make_record(row: Mapping[Any, Any]) -> SeriesRecord:
    """Build a record from one series-level mapping of DICOM keyword -> value (missing keys allowed)."""
    g = row.get
    desc, proto, seqname = to_text(g("SeriesDescription")), to_text(g("ProtocolName")), to_text(g("SequenceName"))
    echoes = g("EchoNumbers")
    echo_numbers = tuple(sorted({i for i in map(to_int, _items(echoes)) if i is not None}))
    n = to_int(g("_n_instances"))
    return SeriesRecord(
        study_uid=to_text(g("StudyInstanceUID")),
        series_uid=to_text(g("SeriesInstanceUID")),
        series_number=to_int(g("SeriesNumber")),
        series_description=desc,
        protocol_name=proto,
        sequence_name=seqname,
        image_type=to_tokens(g("ImageType")),
        scanning_sequence=to_tokens(g("ScanningSequence")),
        sequence_variant=to_tokens(g("SequenceVariant")),
        scan_options=to_tokens(g("ScanOptions")),
        mr_acquisition_type=to_text(g("MRAcquisitionType")).upper(),
        repetition_time=to_float(g("RepetitionTime")),
        echo_time=to_float(g("EchoTime")),
        inversion_time=to_float(g("InversionTime")),
        flip_angle=to_float(g("FlipAngle")),
        echo_train_length=to_float(g("EchoTrainLength")),
        echo_numbers=echo_numbers,
        magnetic_field_strength=to_float(g("MagneticFieldStrength")),
        manufacturer=to_text(g("Manufacturer")),
        model_name=to_text(g("ManufacturerModelName")),
        iop=to_vector(g("ImageOrientationPatient"), 6),
        ipp=to_vector(g("ImagePositionPatient"), 3),
        slice_thickness=to_float(g("SliceThickness")),
        series_date=to_date(g("SeriesDate")),
        series_time=to_time(g("SeriesTime")),
        acquisition_time=to_time(g("AcquisitionTime")),
        content_time=to_time(g("ContentTime")),
        contrast_agent=to_text(g("ContrastBolusAgent")),
        max_b_value=to_float(g("DiffusionBValue")),
        body_part=to_text(g("BodyPartExamined")).upper(),
        n_instances=n if n is not None and n > 0 else 1,
        names=names_text(desc, proto, seqname),
        temporal_positions=_temporal_positions(g, n if n is not None and n > 0 else 1),
        gradient_directions=to_int(g("_gradient_directions")),
    )


def _temporal_positions(g: Any, n_instances: int) -> int | None:
    """Volumes of a time series: NumberOfTemporalPositions, else what the instances show (repeated positions,
    distinct acquisition or temporal position numbers, or one volume per mosaic)."""
    counts = [to_int(g(k)) for k in ("NumberOfTemporalPositions", "_n_temporal", "_n_acquisitions")]
    positions = to_int(g("_n_positions"))
    if positions:
        counts.append(n_instances // positions)
    if "MOSAIC" in to_tokens(g("ImageType")):
        counts.append(n_instances)
    known = [c for c in counts if c is not None and c > 0]
    return max(known) if known else None


# Per-instance columns reduced over the whole series rather than taken from its first instance.
_NUMERIC_MAX = ("DiffusionBValue",)
_TIME_MIN = ("AcquisitionTime", "ContentTime")


def _numeric(series: pd.Series, parse: Any) -> pd.Series:
    try:
        return pd.to_numeric(series, errors="coerce")
    except (TypeError, ValueError):
        return pd.Series([parse(v) for v in series], index=series.index, dtype="float64")


def records_from_frame(df: pd.DataFrame) -> list[SeriesRecord]:
    """One record per series of an instance-level (or series-level) frame; non-MR rows are dropped.

    Series-level attributes come from the series' lowest-numbered instance (first non-missing value);
    b-value is the series maximum, acquisition/content times the series minimum, echo numbers the set.
    Rows without SeriesInstanceUID are grouped by study + series number + description.
    """
    if df.empty:
        return []
    frame = df
    if "Modality" in frame.columns:
        modality = _str_column(frame["Modality"]).str.upper()
        frame = frame[(modality == "MR") | (modality == "")]
        if frame.empty:
            return []
    frame = frame.reset_index(drop=True)
    key = _series_key(frame)
    if "InstanceNumber" in frame.columns:
        order = _numeric(frame["InstanceNumber"], to_float).fillna(float("inf"))
        frame = frame.assign(_key=key, _order=order).sort_values(["_key", "_order"], kind="stable")
    else:
        frame = frame.assign(_key=key)
    grouped = frame.groupby("_key", sort=False, dropna=False)
    plain = [c for c in frame.columns if c not in {"_key", "_order"}]
    firsts = grouped[plain].first()
    firsts["_n_instances"] = grouped.size()
    for col in _NUMERIC_MAX:
        if col in frame.columns:
            firsts[col] = _numeric(frame[col], to_float).groupby(frame["_key"], sort=False).max()
    for col in _TIME_MIN:
        if col in frame.columns:
            text = _str_column(frame[col]).str.replace(":", "", regex=False)
            times = pd.to_numeric(text, errors="coerce").astype("float64")
            firsts[col] = times.groupby(frame["_key"], sort=False).min()
    for col, name in (("AcquisitionNumber", "_n_acquisitions"), ("TemporalPositionIdentifier", "_n_temporal")):
        if col in frame.columns:
            firsts[name] = _numeric(frame[col], to_float).groupby(frame["_key"], sort=False).nunique()
    if "ImagePositionPatient" in frame.columns:
        positions = frame["ImagePositionPatient"].map(lambda v: _rounded(to_vector(v, 3), 1.0))
        firsts["_n_positions"] = positions.groupby(frame["_key"], sort=False).nunique()
    firsts["_gradient_directions"] = _gradient_directions(frame)
    if "EchoNumbers" in frame.columns:
        pairs = pd.DataFrame({"k": frame["_key"], "e": _numeric(frame["EchoNumbers"], to_float)})
        pairs = pairs.dropna().drop_duplicates().sort_values("e")
        firsts["EchoNumbers"] = pairs.groupby("k", sort=False)["e"].agg(tuple)
    firsts = firsts.astype(object).where(firsts.notna(), None)
    return [make_record(row) for row in firsts.to_dict("records")]


def _rounded(vector: tuple[float, ...] | None, step: float) -> tuple[int, ...] | None:
    return None if vector is None else tuple(round(v / step) for v in vector)


def _directions(value: Any) -> list[tuple[float, float, float]]:
    """Gradient vectors in one cell: one vector, or (enhanced multi-frame) the list of its frames' vectors."""
    items = value if isinstance(value, list | tuple) and value and isinstance(value[0], list | tuple) else [value]
    out = []
    for item in items:
        v = to_vector(item, 3)
        if v is not None:
            out.append((v[0], v[1], v[2]))
    return out


def _gradient_directions(frame: pd.DataFrame) -> pd.Series:
    """Distinct non-zero gradient directions per series (a direction and its opposite count once), from the
    standard attribute (and Siemens' private one, read into it) or GE/Philips per-axis private elements."""
    per_row: list[list[tuple[float, float, float]]] = [[] for _ in range(len(frame))]
    if "DiffusionGradientOrientation" in frame.columns:
        for i, value in enumerate(frame["DiffusionGradientOrientation"]):
            per_row[i] = _directions(value)
    axes = ("GEDiffusionGradientX", "GEDiffusionGradientY", "GEDiffusionGradientZ")
    if all(a in frame.columns for a in axes):
        for i, xyz in enumerate(zip(*(frame[a] for a in axes), strict=True)):
            if not per_row[i]:
                v = tuple(to_float(c) for c in xyz)
                if all(c is not None for c in v):
                    per_row[i] = [(float(v[0]), float(v[1]), float(v[2]))]  # type: ignore[arg-type]
    found: dict[Any, set[tuple[int, ...]]] = {}
    for key, vectors in zip(frame["_key"], per_row, strict=True):
        for x, y, z in vectors:
            norm = math.sqrt(x * x + y * y + z * z)
            if norm < 1e-3:
                continue
            unit = (x / norm, y / norm, z / norm)
            if max(unit, key=abs) < 0:
                unit = (-unit[0], -unit[1], -unit[2])
            found.setdefault(key, set()).add(tuple(round(c * 50) for c in unit))
    return pd.Series({k: len(v) for k, v in found.items()}, dtype=object)


def _str_column(col: pd.Series) -> pd.Series:
    """Vectorised to_text for single-valued columns: missing -> '', everything else str() and stripped."""
    return col.astype(object).where(col.notna(), "").astype(str).str.strip()


def _series_key(frame: pd.DataFrame) -> pd.Series:
    if "SeriesInstanceUID" in frame.columns:
        uid = _str_column(frame["SeriesInstanceUID"])
    else:
        uid = pd.Series([""] * len(frame), index=frame.index, dtype=object)
    missing = uid == ""
    if missing.any():
        fallback = pd.Series(["~"] * len(frame), index=frame.index, dtype=object)
        for col in ("StudyInstanceUID", "SeriesNumber", "SeriesDescription"):
            if col in frame.columns:
                fallback = fallback + "/" + frame[col].map(to_text)
        uid = uid.where(~missing, fallback)
    return uid
