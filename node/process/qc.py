"""Image quality flags per series: pure checks on the pixel array the NIfTI step holds and on slice positions.

Each flag is "CODE: reason in words". Thresholds come per modality from the `qc:` config section; a modality
without its own entry uses `default`. The checks are heuristics a person confirms on the preview: they say
where to look, they never drop or change data.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROJECTION = frozenset({"CR", "DX", "MG", "RF", "XA", "IO", "PX"})
_SAMPLE = 200_000  # voxels looked at per volume: enough for fractions of a percent, bounded time
_POLARITY_SIDE = 256  # a radiograph is judged on a coarse grid: borders and centre are large regions


@dataclass(frozen=True)
class Thresholds:
    min_instances: int = 1
    clip_high_fraction: float | None = 0.02
    clip_low_fraction: float | None = None
    check_polarity: bool = False
    spacing_tolerance: float = 0.1  # relative deviation from the median gap that counts as uneven
    gap_factor: float = 1.5  # a gap this many times the median gap is a missing slice


# The shipped thresholds; `qc.thresholds` in the config overrides them key by key, per modality.
SHIPPED: dict[str, dict[str, Any]] = {
    "default": {"min_instances": 1, "clip_high_fraction": 0.02, "clip_low_fraction": None, "check_polarity": False},
    "CT": {"min_instances": 10},
    "MR": {"min_instances": 5},
    "PT": {"min_instances": 10},
    # Radiographs: direct exposure and collimator shutters make large flat areas at either end of the range.
    "CR": {"clip_high_fraction": 0.15, "clip_low_fraction": 0.15, "check_polarity": True},
    "DX": {"clip_high_fraction": 0.15, "clip_low_fraction": 0.15, "check_polarity": True},
    # Mammograms: the background outside the breast is black by design (no low-end clipping check).
    "MG": {"clip_high_fraction": 0.05, "check_polarity": True},
}


@dataclass(frozen=True)
class QcConfig:
    """The `qc:` section as plain values (it crosses into worker processes)."""

    enabled: bool = True
    previews: bool = True
    by_modality: Mapping[str, Thresholds] = field(default_factory=dict)

    def for_modality(self, modality: str | None) -> Thresholds:
        return self.by_modality.get(str(modality or "").upper()) or self.by_modality.get("default") or Thresholds()

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> QcConfig:
        given = {("default" if str(k) == "default" else str(k).upper()): dict(v or {})
                 for k, v in (section.get("thresholds") or {}).items()}
        default = {**SHIPPED["default"], **given.get("default", {})}
        by_modality = {mod: Thresholds(**{**default, **SHIPPED.get(mod, {}), **given.get(mod, {})})
                       for mod in {*SHIPPED, *given}}
        return cls(bool(section.get("enabled", True)), bool(section.get("previews", True)), by_modality)


def _sample(data: np.ndarray) -> np.ndarray:
    volume = data[0] if data.ndim == 4 else data
    flat = volume.reshape(-1)
    step = max(1, flat.size // _SAMPLE)
    return flat[::step]


def pixel_flags(data: np.ndarray, modality: str | None, photometric: str, t: Thresholds) -> list[str]:
    """Flags from the voxel values of one volume (the first of a 4D series)."""
    sample = _sample(data)
    if sample.size == 0:
        return ["BLANK: the image has no pixels"]
    lo, hi = (float(v) for v in np.percentile(sample, [1, 99]))
    vmin, vmax = float(sample.min()), float(sample.max())
    if vmax == vmin:
        return [f"BLANK: every pixel has the value {vmin:g}"]
    if hi == lo:
        return [f"BLANK: at least 98% of the pixels have the value {lo:g} (near-constant image)"]
    flags = []
    if t.clip_high_fraction is not None:
        at_max = float(np.count_nonzero(sample == vmax)) / sample.size
        if at_max > t.clip_high_fraction:
            flags.append(f"CLIPPED_HIGH: {at_max:.1%} of the pixels sit at the maximum {vmax:g} (over-exposed or "
                         f"saturated; limit {t.clip_high_fraction:.1%})")
    if t.clip_low_fraction is not None:
        at_min = float(np.count_nonzero(sample == vmin)) / sample.size
        if at_min > t.clip_low_fraction:
            flags.append(f"CLIPPED_LOW: {at_min:.1%} of the pixels sit at the minimum {vmin:g} (under-exposed; "
                         f"limit {t.clip_low_fraction:.1%})")
    if t.check_polarity and str(modality or "").upper() in PROJECTION:
        flag = polarity_flag(data[0] if data.ndim == 4 else data, photometric)
        if flag:
            flags.append(flag)
    return flags


def polarity_flag(volume: np.ndarray, photometric: str) -> str | None:
    """A projection image shown the wrong way round: its border (direct exposure, air) displays brighter than its
    centre (the patient). A collimated image with white shutters on every side can trip it: confirm on the preview."""
    image = volume[volume.shape[0] // 2] if volume.ndim == 3 else volume
    step = max(1, max(image.shape) // _POLARITY_SIDE)
    image = image[::step, ::step]
    display = -image.astype(np.float64) if photometric == "MONOCHROME1" else image.astype(np.float64)
    rows, cols = display.shape
    br, bc = max(1, rows // 20), max(1, cols // 20)
    border = np.concatenate([display[:br].ravel(), display[-br:].ravel(), display[:, :bc].ravel(),
                             display[:, -bc:].ravel()])
    centre = display[rows // 4: rows - rows // 4, cols // 4: cols - cols // 4]
    span = float(np.percentile(display, 99) - np.percentile(display, 1)) or 1.0
    if float(np.median(border)) - float(np.median(centre)) > 0.25 * span:
        return ("INVERTED: the border of the image displays brighter than its centre (direct exposure shown white?); "
                f"check the polarity ({photometric})")
    return None


def geometry_flags(n_instances: int, along: Sequence[float] | None, t: Thresholds, localizer: bool = False) -> list[str]:
    """Flags from the count of instances and their positions along the slice normal (one value per instance)."""
    flags = []
    if n_instances < t.min_instances and not localizer:
        flags.append(f"FEW_INSTANCES: {n_instances} instance(s), fewer than {t.min_instances} expected for this "
                     "modality (qc.thresholds)")
    if not along or len(along) < 3 or localizer:
        return flags
    counts: dict[float, int] = {}
    for value in along:
        key = round(float(value), 2)
        counts[key] = counts.get(key, 0) + 1
    per_position = set(counts.values())
    if len(per_position) > 1:
        usual = max(per_position, key=lambda c: sum(1 for v in counts.values() if v == c))
        extra = sum(1 for v in counts.values() if v > usual)
        flags.append(f"DUPLICATE_POSITIONS: {extra} slice position(s) hold more images than the others "
                     f"(usually {usual} per position)")
    positions = sorted(counts)
    if len(positions) < 3:
        return flags
    gaps = [b - a for a, b in itertools.pairwise(positions)]
    median = float(np.median(gaps))
    if median <= 0:
        return flags
    big = [g for g in gaps if g > t.gap_factor * median]
    if big:
        flags.append(f"MISSING_SLICES: {len(big)} gap(s) larger than {t.gap_factor:g}x the usual spacing "
                     f"(largest {max(big):.2f} mm, usual {median:.2f} mm)")
    elif max(abs(g - median) for g in gaps) > t.spacing_tolerance * median:
        worst = max(gaps, key=lambda g: abs(g - median))
        flags.append(f"UNEVEN_SPACING: slice gaps vary from the usual {median:.2f} mm up to {worst:.2f} mm")
    return flags
