"""Facts about a series decided once, for every output: slice orientation, localizer, derived or secondary.

The workbook's Series_Summary, MR_clean, the NIfTI step and the request series filter all ask these functions,
so one workbook cannot contradict itself. Each answer carries the evidence that decided it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from node.dicom.keywords import KeywordSet

# Modalities that never hold images to convert: reports, presentation states, key objects, raw data.
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "REG", "RWV", "DOC", "PLAN", "RAW", "FID"})
# ImageType values of a DERIVED image that is a rendering of other images, not an image of the patient.
_RENDER_TOKENS = frozenset({"MPR", "MIP", "MINIP", "VR", "REFORMATTED", "PROJECTION IMAGE", "CSA MPR", "CSA 3D EDITOR"})
_PLANE_LIMIT = 5  # a plane of a multi-plane localizer has at most this many images
_ORTHOGONAL = 0.2  # |cos| between two slice normals below this: orthogonal planes


class Orientation(StrEnum):
    """Slice orientation from the slice normal's dominant axis (OBL when no axis dominates)."""

    AX = "AX"
    SAG = "SAG"
    COR = "COR"
    OBL = "OBL"
    UNKNOWN = "UNKNOWN"


class Derivation(StrEnum):
    """ORIGINAL acquisitions; DERIVED images computed from them (ADC, subtraction) that are still images of the
    patient; SECONDARY objects that are not acquisitions (reformats, renders, screen captures, reports)."""

    ORIGINAL = "ORIGINAL"
    DERIVED = "DERIVED"
    SECONDARY = "SECONDARY"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Vocabulary:
    """The words and thresholds behind the facts. MR_clean's rule data can override them for MR_Cleaned."""

    # cos 18 deg: a plane whose normal is more than about 18 degrees from every axis is oblique.
    oblique_threshold: float = 0.95
    localizer_tokens: frozenset[str] = frozenset({"LOCALIZER", "SCOUT", "SURVEY"})
    localizer_names: KeywordSet = field(default_factory=lambda: KeywordSet((
        "localizer", "localiser", "loc", "scout", "survey", "surview", "pilot", "tripilot", "topogram", "scanogram",
        "3-plane", "3plane", "3 plane", "3pl", "aahead_scout", "定位",
    )))
    secondary_names: KeywordSet = field(default_factory=lambda: KeywordSet((
        "mpr", "mip", "minip", "vr", "vrt", "reformat", "reformatted", "screen save", "screensave", "screen shot",
        "screenshot", "screen capture", "secondary", "dose report", "dose info", "patient protocol",
        "localizer report", "key image", "key images",
    )))
    derived_names: KeywordSet = field(default_factory=lambda: KeywordSet((
        "sub", "subtraction", "adc", "fa", "tracew", "colfa", "减影", "重建",
    )))
    # A site's original acquisitions whose names look derived: never derived or secondary by name.
    original_names: KeywordSet = field(default_factory=lambda: KeywordSet(()))


DEFAULT = Vocabulary()


def slice_normal(iop: Sequence[object] | None) -> tuple[float, float, float] | None:
    """Unit normal of the slice plane from ImageOrientationPatient; None when missing or degenerate."""
    if iop is None or len(iop) != 6:
        return None
    try:
        r = [float(v) for v in iop[:3]]  # type: ignore[arg-type]
        c = [float(v) for v in iop[3:]]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in n))
    if not math.isfinite(norm) or norm < 1e-6:
        return None
    return (n[0] / norm, n[1] / norm, n[2] / norm)


def planes(iops: Iterable[Sequence[object] | None]) -> list[tuple[tuple[float, float, float], int]]:
    """The distinct slice planes of a series (normals equal to 0.01) with their image counts."""
    counts: dict[tuple[float, ...], int] = {}
    normals: dict[tuple[float, ...], tuple[float, float, float]] = {}
    seen: dict[object, tuple[tuple[float, ...], tuple[float, float, float]] | None] = {}
    for iop in iops:
        ident = tuple(iop) if iop is not None else None  # thousands of images share a few orientations
        if ident not in seen:
            n = slice_normal(iop)
            seen[ident] = None if n is None else (tuple(round(v, 2) for v in n), n)
        found = seen[ident]
        if found is not None:
            key, n = found
            counts[key] = counts.get(key, 0) + 1
            normals.setdefault(key, n)
    return [(normals[k], c) for k, c in counts.items()]


def orientation(iop: Sequence[object] | None, vocab: Vocabulary = DEFAULT) -> tuple[Orientation, str]:
    """AX/SAG/COR from the dominant axis of the slice normal; OBL when it is below the threshold."""
    n = slice_normal(iop)
    if n is None:
        return Orientation.UNKNOWN, "no IOP" if iop is None else "degenerate IOP"
    comps = [abs(v) for v in n]
    i = max(range(3), key=comps.__getitem__)
    axis, threshold = "xyz"[i], vocab.oblique_threshold
    tilt = math.degrees(math.acos(min(1.0, comps[i])))
    if comps[i] < threshold:
        return Orientation.OBL, f"IOP normal max |{axis}|={comps[i]:.2f}<{threshold:g} (tilted {tilt:.0f} deg)"
    label = (Orientation.SAG, Orientation.COR, Orientation.AX)[i]
    return label, f"IOP normal |{axis}|={comps[i]:.2f}>={threshold:g} (tilted {tilt:.0f} deg)"


def _first_token(image_type: Iterable[str], tokens: frozenset[str]) -> str | None:
    return next((t for t in image_type if t in tokens), None)


def localizer(
    image_type: Sequence[str],
    names: str,
    planes: Sequence[tuple[tuple[float, float, float], int]] = (),
    vocab: Vocabulary | None = None,
) -> str | None:
    """Why a series is a localizer (scout, survey), or None.

    image_type: upper-case ImageType values (any instance's); names: the lower-cased description and protocol;
    planes: (slice normal, image count) of each distinct plane, when the caller has the geometry.
    """
    vocab = vocab or DEFAULT
    token = _first_token(image_type, vocab.localizer_tokens)
    if token:
        return f"ImageType {token}"
    word = vocab.localizer_names.find(names.lower())
    if word:
        return f"name '{word}'"
    if len(planes) >= 2:
        normals = [n for n, _ in planes]
        orthogonal = any(
            abs(sum(a[k] * b[k] for k in range(3))) < _ORTHOGONAL for i, a in enumerate(normals) for b in normals[i + 1 :]
        )
        if orthogonal and max(count for _, count in planes) <= _PLANE_LIMIT:
            return f"{len(planes)} orthogonal planes of at most {_PLANE_LIMIT} images"
    return None


def derivation(
    image_type: Sequence[str], names: str, modality: str = "", vocab: Vocabulary | None = None
) -> tuple[Derivation, str]:
    """ORIGINAL/DERIVED/SECONDARY and why: ImageType decides when present; names only without it."""
    vocab = vocab or DEFAULT
    if modality.upper() in NON_IMAGE_MODALITIES:
        return Derivation.SECONDARY, f"modality {modality.upper()}"
    if "SECONDARY" in image_type:
        return Derivation.SECONDARY, "ImageType SECONDARY"
    first = image_type[0] if image_type else ""
    if first == "DERIVED":
        render = _first_token(image_type, _RENDER_TOKENS)
        if render:
            return Derivation.SECONDARY, "ImageType " + "\\".join(image_type)
        return Derivation.DERIVED, "ImageType[0]=DERIVED"
    if first == "ORIGINAL":
        return Derivation.ORIGINAL, "ImageType[0]=ORIGINAL"
    lowered = names.lower()
    word = vocab.original_names.find(lowered)
    if word:
        return Derivation.UNKNOWN, f"name '{word}' is a site original (requests.original_keywords)"
    word = vocab.secondary_names.find(lowered)
    if word:
        return Derivation.SECONDARY, f"name '{word}' (ImageType[0]={first or 'missing'})"
    word = vocab.derived_names.find(lowered)
    if word:
        return Derivation.DERIVED, f"name '{word}' (ImageType[0]={first or 'missing'})"
    return Derivation.UNKNOWN, f"ImageType[0]={first or 'missing'}"
