"""Classify one SeriesRecord into the MR_clean features, keeping the rule that decided each field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from node.mr_clean import rules
from node.mr_clean.config import MrCleanConfig
from node.mr_clean.enums import (
    NO_GROUP,
    Dimension,
    DixonOutput,
    Family,
    FieldStrength,
    ImageKind,
    Manufacturer,
    Orientation,
)
from node.mr_clean.record import SeriesRecord


@dataclass(frozen=True)
class SeriesFeatures:
    """The derived columns of one series; `evidence` maps each column to the rule that decided it."""

    orientation: Orientation
    dimension: Dimension
    image_kind: ImageKind
    field_strength: FieldStrength
    manufacturer: Manufacturer
    model_name: str
    fat_suppressed: bool
    motion_corrected: bool
    sequence_class: str
    contrast_enhanced: bool
    dixon: DixonOutput | None = None
    contrast_source: str = "none"
    special: bool = False
    dynamic_group: str = NO_GROUP
    dynamic_phase: str = NO_GROUP
    family: str = ""  # the sequence family (GRE, TSE, EPI...): the seed's sequenceFamily
    derived: bool = False
    secondary: bool = False
    evidence: Mapping[str, str] = field(default_factory=dict)


def sequence_class(
    rec: SeriesRecord, cfg: MrCleanConfig, fs: FieldStrength, kind: ImageKind, dixon: DixonOutput | None, mc: bool
) -> tuple[str, str, bool]:
    """sequenceClass in priority order: specials, diffusion/BOLD/inversion physics, family x weighting, names,
    then the Dixon/echo/motion suffixes. Returns (class, evidence, is_special)."""
    if kind is ImageKind.LOCALIZER:
        return "LOCALIZER", "refinedImageType LOCALIZER", True
    # An EPI time series is decided by its physics before any name rule: BIDS names such as
    # "func-bold_task-fa_run-1" carry words ("fa") that would otherwise pick a map class.
    bold = rules.bold_class(rec, cfg)
    if bold:
        return bold[0], bold[1], False
    special = rules.special_class(rec, cfg, kind)
    if special:
        return special[0], special[1], True
    fieldmap = rules.fieldmap_structure(rec)
    if fieldmap:
        return "FIELDMAP", fieldmap, True
    diffusion = rules.diffusion_class(rec, cfg)
    if diffusion:
        return diffusion[0], diffusion[1], False

    family, fam_why = rules.physics_family(rec, cfg)
    physics = family is not None
    if family is None:
        family, fam_why = rules.name_family(rec, cfg)
    inversion, inv_why, ir_t1 = rules.inversion_class(rec, cfg, fs, family)
    if inversion:
        base, why = inversion, inv_why
    else:
        weighting, w_why = (None, "")
        if family is not None:
            weighting, w_why = rules.physics_weighting(rec, cfg, fs, family, ir_t1)
        if weighting is None:
            weighting, w_why = rules.name_weighting(rec, cfg)
        if family is not None and weighting is not None:
            base, why = f"{weighting}_{family}", f"family {fam_why}, weighting {w_why}"
        elif family is not None:
            base, why = family.value, f"family {fam_why}, weighting undecided"
        elif weighting is not None:
            base, why = weighting.value, f"weighting {w_why}, family undecided"
        else:
            return "UNKNOWN", "no physics and no name rule matched", False
        why = f"physics: {why}" if physics else f"name fallback: {why}"

    suffix = ""
    if dixon is not None:
        suffix += f"_{dixon}"
    if len(rec.echo_numbers) == 1 and rec.echo_numbers[0] >= cfg.echo_suffix_from:
        suffix += f"_ECHO{rec.echo_numbers[0]}"
    if mc:
        suffix += "_MC"
    return base + suffix, why + (f" (suffix {suffix})" if suffix else ""), False


def classify_series(rec: SeriesRecord, cfg: MrCleanConfig) -> SeriesFeatures:
    """All per-series features of one record (the study-level pass adds dynamics and propagation)."""
    orient, orient_why = rules.orientation(rec, cfg)
    dim, dim_why = rules.dimension(rec, cfg)
    kind, kind_why = rules.image_kind(rec, cfg)
    fs, fs_why = rules.field_strength(rec, cfg)
    vendor, vendor_why = rules.manufacturer(rec, cfg)
    dixon, dixon_why = rules.dixon_output(rec, cfg)
    mc, mc_why = rules.motion_correction(rec, cfg)
    cls, cls_why, special = sequence_class(rec, cfg, fs, kind, dixon, mc)
    fat, fat_why = rules.fat_suppression(rec, cfg, cls, None if special else dixon, dixon_why)
    enhanced, ce_why, ce_source = rules.contrast(rec, cfg, cls)
    family, fam_why = rules.physics_family(rec, cfg)
    if family is None:
        family, fam_why = rules.name_family(rec, cfg)
    if family is None and rules.is_epi(rec, cfg):
        family, fam_why = Family.EPI, f"EPI readout ({rules.is_epi(rec, cfg)})"
    derived, secondary, derived_why = rules.derivation(rec, cfg)
    return SeriesFeatures(
        orientation=orient,
        dimension=dim,
        image_kind=kind,
        field_strength=fs,
        manufacturer=vendor,
        model_name=rules.cleaned_model_name(rec, cfg),
        fat_suppressed=fat,
        motion_corrected=mc,
        sequence_class=cls,
        contrast_enhanced=enhanced,
        dixon=dixon,
        contrast_source=ce_source,
        special=special,
        family=family.value if family is not None else "UNKNOWN",
        derived=derived,
        secondary=secondary,
        evidence={
            "sequenceFamily": fam_why or "no physics and no name rule",
            "isDerivedImage": derived_why,
            "standardOrientation": orient_why,
            "standardDimension": dim_why,
            "refinedImageType": kind_why,
            "standardFieldStrength": fs_why,
            "standardManufacturer": vendor_why,
            "isFatSuppressed": fat_why,
            "hasMotionCorrection": mc_why,
            "sequenceClass": cls_why,
            "isContrastEnhanced": ce_why,
        },
    )
