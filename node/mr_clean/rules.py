"""Pure per-series rules: each reads a SeriesRecord and returns (value, the rule that decided it)."""

from __future__ import annotations

from node.dicom import facts
from node.mr_clean.config import MrCleanConfig
from node.mr_clean.enums import (
    Dimension,
    DixonOutput,
    Family,
    FieldStrength,
    ImageKind,
    Manufacturer,
    Orientation,
    Weighting,
)
from node.mr_clean.record import SeriesRecord

_AXES = (Orientation.SAG, Orientation.COR, Orientation.AX)


def _first(tokens: tuple[str, ...], wanted: frozenset[str]) -> str | None:
    return next((t for t in tokens if t in wanted), None)


def _g(v: float) -> str:
    return f"{v:g}"


def orientation(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[Orientation, str]:
    """AX/SAG/COR/OBL from the slice normal (node.dicom.facts decides); name keywords only without a usable IOP."""
    label, why = facts.orientation(rec.iop, cfg.facts)
    if label is not facts.Orientation.UNKNOWN:
        return Orientation(label.value), why
    for name_label, keywords in cfg.orientation_names:
        kw = keywords.find(rec.names)
        if kw:
            return name_label, f"name '{kw}' ({why})"
    return Orientation.UNKNOWN, f"{why}, no name keyword"


def dimension(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[Dimension, str]:
    """2D/3D from MRAcquisitionType; name keywords only when it is missing."""
    if rec.mr_acquisition_type in ("2D", "3D"):
        return Dimension(rec.mr_acquisition_type), f"MRAcquisitionType={rec.mr_acquisition_type}"
    for label, keywords in cfg.dimension_names:
        kw = keywords.find(rec.names)
        if kw:
            return Dimension(label), f"name '{kw}' (no MRAcquisitionType)"
    return Dimension.UNKNOWN, "no MRAcquisitionType"


_KIND = {
    facts.Derivation.ORIGINAL: ImageKind.ORIGINAL,
    facts.Derivation.DERIVED: ImageKind.DERIVED,
    facts.Derivation.SECONDARY: ImageKind.DERIVED,
    facts.Derivation.UNKNOWN: ImageKind.OTHER,
}


def image_kind(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[ImageKind, str]:
    """LOCALIZER, else ORIGINAL/DERIVED: the node-wide decisions of node.dicom.facts."""
    why = facts.localizer(rec.image_type, rec.names, vocab=cfg.facts)
    if why:
        return ImageKind.LOCALIZER, why
    kind, why = facts.derivation(rec.image_type, rec.names, vocab=cfg.facts)
    return _KIND[kind], why


def field_strength(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[FieldStrength, str]:
    """Bucket of MagneticFieldStrength (Gauss values converted); model-name hints when it is missing."""
    tesla = rec.magnetic_field_strength
    source = ""
    if tesla is not None and tesla > 0:
        source = f"MagneticFieldStrength={_g(tesla)}"
        if tesla > cfg.gauss_above:
            tesla /= 10000.0
            source += " G"
    else:
        tesla = None
        model = rec.model_name.lower()
        for keywords, hint in cfg.model_hints:
            kw = keywords.find(model)
            if kw:
                if hint is not None:
                    tesla, source = hint, f"model '{kw}' (no MagneticFieldStrength)"
                break
    if tesla is None:
        return FieldStrength.UNKNOWN, "no MagneticFieldStrength"
    if tesla < cfg.low_field_below:
        bucket = FieldStrength.LOW
    elif tesla < cfg.mid_field_below:
        bucket = FieldStrength.T15
    elif tesla < cfg.high_field_from:
        bucket = FieldStrength.T30
    else:
        bucket = FieldStrength.HIGH
    return bucket, source


def manufacturer(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[Manufacturer, str]:
    text = rec.manufacturer.lower()
    if not text:
        return Manufacturer.OTHER, "no Manufacturer"
    for vendor, keywords in cfg.vendors:
        kw = keywords.find(text)
        if kw:
            return vendor, f"Manufacturer '{kw}'"
    return Manufacturer.OTHER, f"Manufacturer '{rec.manufacturer}' not in the vendor table"


def cleaned_model_name(rec: SeriesRecord, cfg: MrCleanConfig) -> str:
    """Model name without vendor/brand words, underscores or repeated spaces ("MAGNETOM_Skyra" -> "Skyra")."""
    strip = {k.lower() for k in cfg.model_strip.keywords}
    words = rec.model_name.replace("_", " ").split()
    kept = [w for w in words if w.lower() not in strip]
    return " ".join(kept or words)


def dixon_output(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[DixonOutput | None, str]:
    """Which Dixon image this is: ImageType values 3+ first, then names (only in a Dixon-named series)."""
    tail = rec.image_type[2:]
    for output, tokens in cfg.dixon_tokens:
        tok = _first(tail, tokens)
        if tok:
            return output, f"ImageType {tok}"
    marker = cfg.dixon_markers.find(rec.names) or ("DIXON" if "DIXON" in rec.image_type else None)
    if marker:
        for output, keywords in cfg.dixon_names:
            kw = keywords.find(rec.names)
            if kw:
                return output, f"Dixon '{marker}' + name '{kw}'"
    return None, ""


def motion_correction(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[bool, str]:
    kw = cfg.motion_names.find(rec.names)
    return (True, f"name '{kw}'") if kw else (False, "no motion-robust keyword")


def special_class(rec: SeriesRecord, cfg: MrCleanConfig, kind: ImageKind) -> tuple[str, str] | None:
    """Priority 1: name/ImageType specials (maps, angio, SWI, perfusion...), in config order."""
    if kind is ImageKind.LOCALIZER:
        return "LOCALIZER", "refinedImageType LOCALIZER"
    for special in cfg.specials:
        tok = _first(rec.image_type, special.image_type_tokens)
        if tok:
            return special.cls, f"special ImageType {tok}"
        kw = special.keywords.find(rec.names)
        if kw:
            return special.cls, f"special name '{kw}'"
    return None


def diffusion_class(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[str, str] | None:
    """DWI/DTI from b-value above the threshold; without one, from diffusion ImageType values or names."""
    b = rec.max_b_value
    dti = cfg.dti_names.find(rec.names)
    dirs = rec.gradient_directions
    if b is not None and b > cfg.b_value_min:
        if dirs is not None:
            cls = "DTI" if dirs >= cfg.dti_min_directions else "DWI"
            sign = ">=" if cls == "DTI" else "<"
            return cls, f"physics b={_g(b)}>{_g(cfg.b_value_min)} + {dirs} gradient directions{sign}{cfg.dti_min_directions}"
        extra = f" + name '{dti}'" if dti else ""
        return ("DTI" if dti else "DWI"), f"physics b={_g(b)}>{_g(cfg.b_value_min)}{extra} (no gradient directions)"
    if dti:
        return "DTI", f"name '{dti}'"
    tok = _first(rec.image_type, cfg.diffusion_tokens)
    if tok:
        return "DWI", f"ImageType {tok}"
    kw = cfg.dwi_names.find(rec.names)
    if kw:
        return "DWI", f"name '{kw}'" + (f" (b={_g(b)})" if b is not None else " (no b-value)")
    return None


def is_epi(rec: SeriesRecord, cfg: MrCleanConfig) -> str | None:
    """Why the readout is echo-planar: ScanningSequence EP, ImageType EPI/FMRI, or an EPI sequence name."""
    if "EP" in rec.scanning_sequence:
        return "ScanningSequence EP"
    tok = _first(rec.image_type, frozenset({"EPI", "FMRI"}))
    if tok:
        return f"ImageType {tok}"
    for fam, keywords in cfg.name_families:
        if fam is Family.EPI:
            kw = keywords.find(rec.sequence_name.lower()) or keywords.find(rec.names)
            if kw:
                return f"name '{kw}'"
    return None


def bold_class(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[str, str] | None:
    """fMRI BOLD from physics and structure: an EPI gradient-echo time series with a BOLD echo time; names
    only confirm an EPI time series. A single-volume EPI (a reverse phase-encode reference) is not BOLD."""
    if "FMRI" in rec.image_type:
        return "fMRI_BOLD", "ImageType FMRI"
    epi = is_epi(rec, cfg)
    if epi is None or (rec.max_b_value is not None and rec.max_b_value > cfg.b_value_min):
        return None
    if _first(rec.image_type, cfg.diffusion_tokens):
        return None
    ss = set(rec.scanning_sequence)
    if "SE" in ss and "GR" not in ss:
        return None  # spin-echo EPI: diffusion references, SE field maps
    volumes = rec.temporal_positions
    if volumes is not None and volumes < cfg.bold_min_volumes:
        return None
    lo, hi = cfg.bold_te_range
    te = rec.echo_time
    name = cfg.bold_names.find(rec.names)
    if volumes is not None and te is not None and lo <= te <= hi:
        extra = f" + name '{name}'" if name else ""
        return "fMRI_BOLD", f"physics: EPI ({epi}), TE={_g(te)} in [{_g(lo)},{_g(hi)}], {volumes} volumes{extra}"
    if name:
        what = f"{volumes} volumes" if volumes is not None else "volumes unknown"
        return "fMRI_BOLD", f"EPI ({epi}) + name '{name}' ({what})"
    return None


def fieldmap_structure(rec: SeriesRecord) -> str | None:
    """A B0 map by ImageType ("B0 MAP", split into tokens), or phase images of a two-echo gradient echo."""
    if {"B0", "MAP"} <= set(rec.image_type):
        return "ImageType B0 MAP"
    if "GR" in rec.scanning_sequence and len(rec.echo_numbers) == 2 and _first(rec.image_type, frozenset({"P", "PHASE"})):
        return f"two-echo GRE phase images (echoes {rec.echo_numbers[0]},{rec.echo_numbers[1]})"
    return None


def derivation(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[bool, bool, str]:
    """(isDerivedImage, isSecondaryImage, why): the node-wide decision of node.dicom.facts."""
    kind, why = facts.derivation(rec.image_type, rec.names, vocab=cfg.facts)
    secondary = kind is facts.Derivation.SECONDARY
    return secondary or kind is facts.Derivation.DERIVED, secondary, why


def physics_family(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[Family | None, str]:
    """Sequence family from ScanningSequence / SequenceVariant / EchoTrainLength (names only refine)."""
    ss = set(rec.scanning_sequence)
    if not ss:
        return None, ""
    if "EP" in ss:
        return Family.EPI, "ScanningSequence EP"
    if "GR" in ss:
        sv = set(rec.sequence_variant)
        if sv & cfg.spoiled_variants:
            return Family.GRE_SPOILED, "ScanningSequence GR + SequenceVariant " + "/".join(sorted(sv & cfg.spoiled_variants))
        if sv & cfg.steady_variants:
            return Family.GRE_STEADY_STATE, "ScanningSequence GR + SequenceVariant " + "/".join(sorted(sv & cfg.steady_variants))
        for fam, keywords in cfg.name_families:
            if fam in (Family.GRE_SPOILED, Family.GRE_STEADY_STATE):
                kw = keywords.find(rec.names)
                if kw:
                    return fam, f"ScanningSequence GR + name '{kw}'"
        return Family.GRE, "ScanningSequence GR"
    te = rec.echo_time
    if "IR" in ss and "SE" not in ss and rec.mr_acquisition_type == "3D" and te is not None and te <= cfg.ir_gre_te_max:
        # MPRAGE, BRAVO, 3D TFE with inversion: a gradient echo whatever ScanningSequence says (GE writes IR).
        return Family.GRE_SPOILED, f"inversion-prepared 3D with TE={_g(te)}<={_g(cfg.ir_gre_te_max)} (ScanningSequence IR)"
    if ss & {"SE", "IR"}:
        label = "/".join(sorted(ss & {"SE", "IR"}))
        for fam, keywords in cfg.name_families:
            if fam is Family.SE_SINGLE_SHOT:
                kw = keywords.find(rec.names)
                if kw:
                    return fam, f"ScanningSequence {label} + name '{kw}'"
        etl = rec.echo_train_length
        if etl is not None:
            if etl >= cfg.single_shot_etl_min and rec.mr_acquisition_type != "3D":
                return Family.SE_SINGLE_SHOT, f"ScanningSequence {label} + ETL={_g(etl)}>={cfg.single_shot_etl_min} (2D)"
            if etl >= cfg.tse_etl_min:
                return Family.TSE, f"ScanningSequence {label} + ETL={_g(etl)}"
            return Family.SE, f"ScanningSequence {label} + ETL={_g(etl)}"
        for fam, keywords in cfg.name_families:
            if fam is Family.TSE:
                kw = keywords.find(rec.names)
                if kw:
                    return fam, f"ScanningSequence {label} + name '{kw}' (no ETL)"
        return Family.SE, f"ScanningSequence {label} (no ETL)"
    return None, ""


def name_family(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[Family | None, str]:
    for fam, keywords in cfg.name_families:
        kw = keywords.find(rec.names)
        if kw:
            return fam, f"name '{kw}'"
    return None, ""


def physics_weighting(
    rec: SeriesRecord, cfg: MrCleanConfig, fs: FieldStrength, family: Family, ir_t1: bool
) -> tuple[Weighting | None, str]:
    """T1/T2/PD/T2* from TR, TE, flip angle and TI, with thresholds of the field-strength bucket."""
    lim = cfg.weighting[fs]
    tr, te, fa, ti = rec.repetition_time, rec.echo_time, rec.flip_angle, rec.inversion_time
    if family in (Family.GRE, Family.GRE_SPOILED, Family.GRE_STEADY_STATE) or (
        family is Family.EPI and "GR" in rec.scanning_sequence
    ):
        if te is not None and te >= lim.gre_t2star_te_min:
            return Weighting.T2STAR, f"GRE TE={_g(te)}>={_g(lim.gre_t2star_te_min)} ({fs})"
        if family is Family.GRE_STEADY_STATE:
            return cfg.steady_state_weighting, "steady-state GRE"
        if te is None or te > lim.gre_t1_te_max:
            return None, ""
        if ti is not None and ti > 0:
            return Weighting.T1, f"GRE TE={_g(te)}<={_g(lim.gre_t1_te_max)} TI={_g(ti)} (IR-prepared, {fs})"
        if fa is None:
            return None, ""
        if fa >= lim.gre_t1_flip_min:
            return Weighting.T1, (f"GRE TE={_g(te)}<={_g(lim.gre_t1_te_max)} FA={_g(fa)}>={_g(lim.gre_t1_flip_min)} ({fs})")
        return Weighting.PD, f"GRE TE={_g(te)} FA={_g(fa)}<{_g(lim.gre_t1_flip_min)} ({fs})"
    if ir_t1 and ti is not None:
        return Weighting.T1, f"IR TI={_g(ti)} between STIR and FLAIR ({fs})"
    if te is None:
        return None, ""
    if family is Family.SE_SINGLE_SHOT and te >= lim.t2_te_min:
        return Weighting.T2, f"single-shot TE={_g(te)}>={_g(lim.t2_te_min)} ({fs})"
    if tr is None:
        return None, ""
    if tr <= lim.t1_tr_max and te <= lim.t1_te_max:
        return Weighting.T1, f"TR={_g(tr)}<={_g(lim.t1_tr_max)} TE={_g(te)}<={_g(lim.t1_te_max)} ({fs})"
    if tr >= lim.long_tr_min and te >= lim.t2_te_min:
        return Weighting.T2, f"TR={_g(tr)}>={_g(lim.long_tr_min)} TE={_g(te)}>={_g(lim.t2_te_min)} ({fs})"
    if tr >= lim.long_tr_min and te <= lim.pd_te_max:
        return Weighting.PD, f"TR={_g(tr)}>={_g(lim.long_tr_min)} TE={_g(te)}<={_g(lim.pd_te_max)} ({fs})"
    return None, ""


def name_weighting(rec: SeriesRecord, cfg: MrCleanConfig) -> tuple[Weighting | None, str]:
    for weighting, keywords in cfg.name_weighting:
        kw = keywords.find(rec.names)
        if kw:
            return weighting, f"name '{kw}'"
    for weighting, keywords in cfg.implied_weighting:
        kw = keywords.find(rec.names)
        if kw:
            return weighting, f"name '{kw}' implies {weighting}"
    return None, ""


def inversion_class(
    rec: SeriesRecord, cfg: MrCleanConfig, fs: FieldStrength, family: Family | None
) -> tuple[str | None, str, bool]:
    """T2_FLAIR / T2_STIR from TI (or names when TI is missing); third value: TI says IR T1-weighted."""
    if family in (Family.GRE, Family.GRE_SPOILED, Family.GRE_STEADY_STATE):
        return None, "", False
    ti = rec.inversion_time
    if ti is not None and ti > 0:
        fmin = cfg.flair_min[fs]
        lo, hi = cfg.stir_range[fs]
        if ti >= fmin:
            return "T2_FLAIR", f"physics TI={_g(ti)}>={_g(fmin)} ({fs})", False
        if lo <= ti <= hi:
            return "T2_STIR", f"physics TI={_g(ti)} in [{_g(lo)},{_g(hi)}] ({fs})", False
        return None, "", ti > hi
    kw = cfg.flair_names.find(rec.names)
    if kw:
        weighting, _ = name_weighting(rec, cfg)
        # "T1 FLAIR" is an inversion-prepared T1: leave it to the weighting rules.
        if weighting is Weighting.T1:
            return None, "", False
        return "T2_FLAIR", f"name '{kw}' (no TI)", False
    kw = cfg.stir_names.find(rec.names)
    if kw:
        return "T2_STIR", f"name '{kw}' (no TI)", False
    return None, "", False


def fat_suppression(
    rec: SeriesRecord, cfg: MrCleanConfig, sequence_class: str, dixon: DixonOutput | None, dixon_why: str
) -> tuple[bool, str]:
    """STIR class, Dixon water (other Dixon outputs are not), ScanOptions, then name keywords."""
    if sequence_class.startswith("T2_STIR"):
        return True, "STIR (see sequenceClass)"
    if dixon is DixonOutput.WATER:
        return True, f"Dixon water ({dixon_why})"
    if dixon is not None:
        return False, f"Dixon {dixon} ({dixon_why})"
    opt = _first(rec.scan_options, cfg.fs_scan_options)
    if opt:
        return True, f"ScanOptions {opt}"
    kw = cfg.fs_negative.find(rec.names)
    if kw:
        return False, f"name '{kw}'"
    kw = cfg.fs_names.find(rec.names)
    if kw:
        return True, f"name '{kw}'"
    return False, "no fat-sat evidence"


def contrast(rec: SeriesRecord, cfg: MrCleanConfig, sequence_class: str) -> tuple[bool, str, str]:
    """Per-series contrast: class rules, then names, then ContrastBolusAgent; third value is the source."""
    for prefix in cfg.contrast_always:
        if sequence_class.startswith(prefix):
            return True, f"class {sequence_class} is always enhanced", "class"
    for prefix in cfg.contrast_never:
        if sequence_class.startswith(prefix):
            return False, f"never for {sequence_class}", "never"
    kw = cfg.contrast_negative.find(rec.names)
    if kw:
        return False, f"name '{kw}'", "negative"
    kw = cfg.contrast_names.find(rec.names)
    if kw:
        return True, f"name '{kw}'", "name"
    agent = rec.contrast_agent
    if agent and agent.strip().lower() not in cfg.agent_none:
        return True, f"ContrastBolusAgent '{agent}'", "agent"
    return False, "no contrast evidence", "none"
