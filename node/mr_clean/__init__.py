"""MR_clean: normalised per-series MR features (orientation, sequence class, fat-sat, contrast, dynamics)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from node.mr_clean.classify import SeriesFeatures, classify_series
from node.mr_clean.config import (
    DEFAULT_CONFIG_PATH,
    MrCleanConfig,
    MrCleanConfigError,
    default_config_dict,
    load_config,
)
from node.mr_clean.dynamics import order_key, study_pass
from node.mr_clean.record import SeriesRecord, make_record, records_from_frame

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "FEATURE_COLUMNS",
    "ID_COLUMNS",
    "OUTPUT_COLUMNS",
    "MrCleanConfig",
    "MrCleanConfigError",
    "SeriesFeatures",
    "SeriesRecord",
    "classify_records",
    "classify_series",
    "default_config_dict",
    "load_config",
    "make_record",
    "process_mri_dataframe",
    "records_from_frame",
]

log = logging.getLogger(__name__)

ID_COLUMNS = ("SeriesInstanceUID", "StudyInstanceUID", "SeriesNumber", "SeriesDescription", "ProtocolName")
FEATURE_COLUMNS = (
    "standardOrientation",
    "standardDimension",
    "refinedImageType",
    "isDerivedImage",
    "isSecondaryImage",
    "standardFieldStrength",
    "standardManufacturer",
    "cleanedModelName",
    "isFatSuppressed",
    "hasMotionCorrection",
    "sequenceFamily",
    "sequenceClass",
    "isContrastEnhanced",
    "dynamicGroup",
    "dynamicPhase",
)
OUTPUT_COLUMNS = (*ID_COLUMNS, *FEATURE_COLUMNS, "evidence")


def classify_records(records: list[SeriesRecord], cfg: MrCleanConfig) -> list[tuple[SeriesRecord, SeriesFeatures]]:
    """Classify records and run the study pass; returns (record, features) sorted by study, then acquisition order."""
    by_study: dict[str, list[SeriesRecord]] = defaultdict(list)
    for rec in records:
        by_study[rec.study_uid].append(rec)
    out: list[tuple[SeriesRecord, SeriesFeatures]] = []
    for study_uid in sorted(by_study):
        recs = by_study[study_uid]
        dates = sorted(r.series_date for r in recs if r.series_date)
        study_date = dates[0] if dates else ""
        recs.sort(key=lambda r: order_key(r, study_date))
        feats = study_pass(recs, [classify_series(r, cfg) for r in recs], cfg)
        out.extend(zip(recs, feats, strict=True))
    return out


def _row(rec: SeriesRecord, f: SeriesFeatures) -> tuple[Any, ...]:
    evidence = "; ".join(f"{col}: {f.evidence[col]}" for col in FEATURE_COLUMNS if f.evidence.get(col))
    return (
        rec.series_uid,
        rec.study_uid,
        rec.series_number,
        rec.series_description,
        rec.protocol_name,
        f.orientation.value,
        f.dimension.value,
        f.image_kind.value,
        f.derived,
        f.secondary,
        f.field_strength.value,
        f.manufacturer.value,
        f.model_name,
        f.fat_suppressed,
        f.motion_corrected,
        f.family,
        f.sequence_class,
        f.contrast_enhanced,
        f.dynamic_group,
        f.dynamic_phase,
        evidence,
    )


def process_mri_dataframe(
    df: pd.DataFrame,
    cfg: MrCleanConfig | Mapping[str, Any] | None = None,
    config_path: str | Path | None = None,
) -> pd.DataFrame:
    """One row per MR series of an instance-level (or series-level) DICOM-keyword frame, with the MR_clean
    features and their evidence. Any column may be missing; non-MR rows are ignored. cfg (a loaded config or
    a dict shaped like node/mr_clean/rules.json) wins over config_path; with neither, node/mr_clean/rules.json is used."""
    config = load_config(cfg if cfg is not None else config_path)
    pairs = classify_records(records_from_frame(df), config)
    out = pd.DataFrame([_row(r, f) for r, f in pairs], columns=list(OUTPUT_COLUMNS))
    out["SeriesNumber"] = out["SeriesNumber"].astype("Int64")
    for col in ("isFatSuppressed", "hasMotionCorrection", "isContrastEnhanced", "isDerivedImage", "isSecondaryImage"):
        out[col] = out[col].astype(bool)
    log.debug("mr_clean: %d rows -> %d MR series", len(df), len(out))
    return out
