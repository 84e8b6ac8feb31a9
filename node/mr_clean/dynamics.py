"""Study-level pass: dynamic groups (PRE, POST_n), contrast of dynamic phases and post-contrast propagation."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any

from node.mr_clean.classify import SeriesFeatures
from node.mr_clean.config import MrCleanConfig
from node.mr_clean.enums import NO_GROUP, PHASE_PRE, PHASE_PROPAGATED
from node.mr_clean.record import SeriesRecord

OrderKey = tuple[float, float, str]


def order_key(rec: SeriesRecord, study_date: str) -> OrderKey:
    """Acquisition order: date + best time (missing last), then series number, then UID."""
    t = rec.time_of_day
    date = rec.series_date or study_date
    when = math.inf if t is None else (float(date) * 1e6 if date else 0.0) + t
    number = float(rec.series_number) if rec.series_number is not None else math.inf
    return (when, number, rec.series_uid)


# ImageType values naming the complex component: magnitude and phase of one acquisition are not two phases.
_COMPONENTS = frozenset({"M", "P", "R", "I", "MAGNITUDE", "PHASE", "REAL", "IMAGINARY"})


def _step(value: float | None, step: float) -> int | None:
    return None if value is None else round(value / step)


def fingerprint(rec: SeriesRecord, feat: SeriesFeatures, cfg: MrCleanConfig) -> Hashable:
    """What series of one dynamic acquisition share: same place, geometry, class and timing parameters."""
    r = cfg.rounding
    pos = None if rec.ipp is None else tuple(_step(v, r["positionMm"]) for v in rec.ipp)
    iop = None if rec.iop is None else tuple(_step(v, r["orientation"]) for v in rec.iop)
    return (
        rec.body_part,
        pos,
        iop,
        feat.sequence_class,
        _step(rec.slice_thickness, r["sliceThicknessMm"]),
        _step(rec.repetition_time, r["repetitionTimeMs"]),
        _step(rec.echo_time, r["echoTimeMs"]),
        _step(rec.flip_angle, r["flipAngleDeg"]),
        next((t for t in rec.image_type[2:] if t in _COMPONENTS), ""),
    )


def _eligible(feat: SeriesFeatures, cfg: MrCleanConfig) -> bool:
    if feat.sequence_class.startswith(cfg.dyn_exclude_prefixes):
        return False
    if feat.family == "EPI":
        return False  # repeated EPI runs (fMRI, reverse phase-encode pairs) are not a contrast dynamic
    # Dixon outputs are DERIVED by ImageType on some vendors yet are the primary images of a Dixon DCE.
    return feat.dixon is not None or feat.image_kind.value not in cfg.dyn_exclude_image_types


def _note(feat: SeriesFeatures, **changes: Any) -> SeriesFeatures:
    """replace() that also records the rule text passed as <column>_why in the evidence."""
    evidence = dict(feat.evidence)
    for key in ("dynamicGroup", "dynamicPhase", "isContrastEnhanced"):
        text = changes.pop(f"{key}_why", None)
        if text is not None:
            evidence[key] = str(text)
    return replace(feat, evidence=evidence, **changes)


def study_pass(records: Sequence[SeriesRecord], feats: Sequence[SeriesFeatures], cfg: MrCleanConfig) -> list[SeriesFeatures]:
    """Apply the study-level rules to the series of ONE study (records and feats in the same order)."""
    out = list(feats)
    dates = sorted(r.series_date for r in records if r.series_date)
    study_date = dates[0] if dates else ""
    keys = [order_key(r, study_date) for r in records]
    never = cfg.contrast_never

    def can_change_contrast(f: SeriesFeatures) -> bool:
        return not f.sequence_class.startswith(never) and f.contrast_source not in ("class", "never")

    if cfg.ignore_agent_on_all and len(records) >= 2:
        agents = {r.contrast_agent.strip().lower() for r in records}
        if not agents & (cfg.agent_none | {""}):
            for i, f in enumerate(out):
                if f.contrast_source == "agent":
                    out[i] = _note(
                        f,
                        contrast_enhanced=False,
                        contrast_source="none",
                        isContrastEnhanced_why="ContrastBolusAgent is on every series of the study: ignored",
                    )

    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, (rec, f) in enumerate(zip(records, out, strict=True)):
        if _eligible(f, cfg):
            groups[fingerprint(rec, f, cfg)].append(i)
            why = f"no other series shares its fingerprint (min {cfg.min_group_size})"
        else:
            why = f"excluded from dynamics ({f.sequence_class}, {f.image_kind})"
        out[i] = _note(f, dynamicGroup_why=why)
    candidates = [sorted(m, key=keys.__getitem__) for m in groups.values() if len(m) >= cfg.min_group_size]
    dynamic = []
    for members in candidates:
        # A group is a dynamic only with contrast evidence in it, or the timing pattern of one (enough repeats);
        # two identical acquisitions alone (a repeat after motion) are not.
        evidence = any(out[i].contrast_enhanced for i in members if out[i].contrast_source in ("name", "agent"))
        if evidence or len(members) >= cfg.contrast_min_group_size:
            dynamic.append(members)
        else:
            for i in members:
                out[i] = _note(out[i], dynamicGroup_why=f"{len(members)} identical series without contrast evidence "
                                                        f"(a dynamic needs it, or {cfg.contrast_min_group_size} series)")
    dynamic.sort(key=lambda m: keys[m[0]])
    for number, members in enumerate(dynamic, start=1):
        name = f"DYN{number}"
        is_contrast = True  # every kept group has contrast evidence or the repeats of a dynamic
        why_group = f"{len(members)} series share body part, position, orientation, class, thickness, TR, TE, FA"
        for k, i in enumerate(members):
            f = out[i]
            phase = PHASE_PRE if k == 0 else f"POST_{k}"
            changes: dict[str, Any] = {
                "dynamic_group": name,
                "dynamic_phase": phase,
                "dynamicGroup_why": why_group,
                "dynamicPhase_why": f"{'first' if k == 0 else f'#{k + 1}'} by acquisition time in {name}",
            }
            if is_contrast and can_change_contrast(f):
                if k == 0 and f.contrast_source != "name":
                    changes |= {"contrast_enhanced": False, "isContrastEnhanced_why": f"dynamic {name} PRE"}
                elif k > 0:
                    changes |= {
                        "contrast_enhanced": True,
                        "contrast_source": "dynamic",
                        "isContrastEnhanced_why": f"dynamic {name} {phase}",
                    }
            out[i] = _note(f, **changes)

    if cfg.propagate:
        known = [keys[i] for i, f in enumerate(out) if f.contrast_enhanced]
        if known:
            ref = max(known) if cfg.propagate_after == "last" else min(known)
            for i, f in enumerate(out):
                if (
                    not f.contrast_enhanced
                    and f.dynamic_phase == NO_GROUP
                    and f.sequence_class.startswith(cfg.propagate_prefixes)
                    and f.contrast_source not in ("negative", "never")
                    and f.image_kind.value not in ("DERIVED", "LOCALIZER")
                    and keys[i][0] != math.inf
                    and keys[i] > ref
                ):
                    out[i] = _note(
                        f,
                        contrast_enhanced=True,
                        contrast_source="propagated",
                        dynamic_phase=PHASE_PROPAGATED,
                        isContrastEnhanced_why=f"propagated: acquired after the {cfg.propagate_after} known post-contrast series",
                        dynamicPhase_why="T1 after known contrast",
                    )
    return out
