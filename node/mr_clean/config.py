"""Load, validate and compile node/mr_clean/rules.json (thresholds and keyword rules of MR_clean).

Longer than our ~450-line norm on purpose: most of it is the JSON schema of rules.json, which documents
and validates the rule data in one place (like the node's schema.yaml).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from node.dicom import facts
from node.dicom.keywords import KeywordSet
from node.mr_clean.enums import DixonOutput, Family, FieldStrength, ImageKind, Manufacturer, Orientation, Weighting

# Shipped with the package (package data); processing.mr_clean_config points at a site copy instead.
DEFAULT_CONFIG_PATH = Path(str(resources.files("node.mr_clean") / "rules.json"))

_FIELDS = [f.value for f in FieldStrength]


class MrCleanConfigError(ValueError):
    """The MR_clean config is invalid; the message lists every problem with its location."""


def _keywords(description: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string"}, "description": description}


def _keyword_table(keys: Iterable[str], description: str) -> dict[str, Any]:
    names = list(keys)
    return {
        "type": "object",
        "properties": {k: _keywords(description) for k in names},
        "required": names,
        "additionalProperties": False,
    }


def _strict(properties: dict[str, Any], optional: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [k for k in properties if k not in set(optional)],
        "additionalProperties": False,
    }


def _per_field(schema: dict[str, Any]) -> dict[str, Any]:
    return _strict(dict.fromkeys(_FIELDS, schema))


_NUM = {"type": "number"}
_POS = {"type": "number", "exclusiveMinimum": 0}
_CLASS_NAME = {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_]*\Z"}
_PREFIXES = {"type": "array", "items": {"type": "string", "minLength": 1}}

_WEIGHTING_LIMITS = _strict(
    {
        k: _POS
        for k in (
            "t1TrMaxMs",
            "t1TeMaxMs",
            "longTrMinMs",
            "t2TeMinMs",
            "pdTeMaxMs",
            "greT1TeMaxMs",
            "greT1FlipMinDeg",
            "greT2StarTeMinMs",
        )
    }
)

SCHEMA: dict[str, Any] = _strict(
    {
        "version": {"const": 1},
        "keywordSyntax": {"type": "string"},
        "orientation": _strict(
            {
                "obliqueThreshold": {"type": "number", "minimum": 0.58, "maximum": 1},
                "nameKeywords": _keyword_table(["AX", "SAG", "COR"], "name keywords, used only without IOP"),
            }
        ),
        "dimension": _strict({"nameKeywords": _keyword_table(["3D", "2D"], "used only without MRAcquisitionType")}),
        "imageType": _strict(
            {
                "localizerTokens": _keywords("ImageType values meaning localizer"),
                "localizerKeywords": _keywords("name keywords meaning localizer"),
                "derivedKeywords": _keywords("name keywords meaning derived, used only without ImageType"),
            }
        ),
        "fieldStrength": _strict(
            {
                "lowFieldBelowT": _POS,
                "midFieldBelowT": _POS,
                "highFieldFromT": _POS,
                "gaussAbove": _POS,
                "modelHintsT": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
            }
        ),
        "manufacturer": _strict(
            {
                "vendors": {
                    "type": "object",
                    "propertyNames": {"enum": [m.value for m in Manufacturer if m is not Manufacturer.OTHER]},
                    "additionalProperties": _keywords("vendor keywords"),
                },
                "modelStripWords": _keywords("words removed from ManufacturerModelName"),
            }
        ),
        "fatSuppression": _strict(
            {
                "scanOptions": _keywords("ScanOptions values meaning fat saturation"),
                "keywords": _keywords("name keywords meaning fat suppressed"),
                "negativeKeywords": _keywords("name keywords meaning explicitly not fat suppressed"),
            }
        ),
        "dixon": _strict(
            {
                "nameMarkers": _keywords("name keywords marking a Dixon acquisition"),
                "imageTypeTokens": _keyword_table([d.value for d in DixonOutput], "ImageType values"),
                "nameKeywords": _keyword_table([d.value for d in DixonOutput], "name keywords (Dixon series only)"),
            }
        ),
        "motionCorrection": _strict({"keywords": _keywords("name keywords of motion-robust sequences")}),
        "sequence": _strict(
            {
                "specials": {
                    "type": "array",
                    "items": _strict(
                        {
                            "class": _CLASS_NAME,
                            "keywords": _keywords("name keywords"),
                            "imageTypeTokens": _keywords("ImageType values"),
                        }
                    ),
                },
                "diffusion": _strict(
                    {
                        "bValueMin": {"type": "number", "minimum": 0},
                        "dwiKeywords": _keywords("name keywords meaning diffusion"),
                        "dtiKeywords": _keywords("name keywords meaning tensor/multi-direction diffusion"),
                        "dtiMinDirections": {"type": "integer", "minimum": 2,
                                             "description": "distinct gradient directions from which diffusion is DTI"},
                        "imageTypeTokens": _keywords("ImageType values meaning diffusion"),
                    }
                ),
                "bold": _strict(
                    {
                        "keywords": _keywords("name keywords meaning BOLD fMRI (EPI only)"),
                        "minVolumes": {"type": "integer", "minimum": 2,
                                       "description": "temporal positions from which an EPI series is a time series"},
                        "echoTimeMs": {"type": "array", "items": _POS, "minItems": 2, "maxItems": 2,
                                       "description": "[min, max] gradient-echo TE of BOLD"},
                    }
                ),
                "inversion": _strict(
                    {
                        "flairMinMs": _per_field(_POS),
                        "stirRangeMs": _per_field({"type": "array", "items": _POS, "minItems": 2, "maxItems": 2}),
                        "flairKeywords": _keywords("name keywords meaning FLAIR (used without TI)"),
                        "stirKeywords": _keywords("name keywords meaning STIR (used without TI)"),
                    }
                ),
                "family": _strict(
                    {
                        "tseEtlMin": {"type": "integer", "minimum": 2},
                        "irGreTeMaxMs": {"type": "number", "minimum": 0,
                                         "description": "an inversion-prepared 3D sequence up to this TE is GRE (MPRAGE)"},
                        "singleShotEtlMin": {"type": "integer", "minimum": 2},
                        "spoiledVariants": _keywords("SequenceVariant values meaning spoiled"),
                        "steadyStateVariants": _keywords("SequenceVariant values meaning steady state"),
                        "nameFamilies": {
                            "type": "object",
                            "propertyNames": {"enum": [f.value for f in Family]},
                            "additionalProperties": _keywords("name keywords of the family"),
                        },
                    }
                ),
                "weighting": _strict(
                    {
                        "byFieldStrength": _per_field(_WEIGHTING_LIMITS),
                        "steadyStateWeighting": {"enum": [w.value for w in Weighting]},
                        "nameWeighting": {
                            "type": "object",
                            "propertyNames": {"enum": [w.value for w in Weighting]},
                            "additionalProperties": _keywords("name keywords of the weighting"),
                        },
                        "impliedWeighting": {
                            "type": "object",
                            "propertyNames": {"enum": [w.value for w in Weighting]},
                            "additionalProperties": _keywords("product names that imply the weighting"),
                        },
                    }
                ),
            }
        ),
        "echo": _strict({"suffixFromEcho": {"type": "integer", "minimum": 1}}),
        "contrast": _strict(
            {
                "keywords": _keywords("name keywords meaning contrast enhanced"),
                "negativeKeywords": _keywords("name keywords meaning explicitly unenhanced"),
                "agentNoneValues": _keywords("ContrastBolusAgent values meaning no agent"),
                "neverClassPrefixes": _PREFIXES,
                "alwaysClassPrefixes": _PREFIXES,
                "ignoreAgentOnAllSeries": {"type": "boolean"},
                "propagation": _strict(
                    {
                        "enabled": {"type": "boolean"},
                        "classPrefixes": _PREFIXES,
                        "after": {"enum": ["first", "last"]},
                    }
                ),
            }
        ),
        "dynamics": _strict(
            {
                "minGroupSize": {"type": "integer", "minimum": 2},
                "contrastMinGroupSize": {"type": "integer", "minimum": 2},
                "excludeClassPrefixes": _PREFIXES,
                "excludeImageTypes": {"type": "array", "items": {"enum": [k.value for k in ImageKind]}},
                "rounding": _strict(
                    {
                        k: _POS
                        for k in (
                            "positionMm",
                            "orientation",
                            "sliceThicknessMm",
                            "repetitionTimeMs",
                            "echoTimeMs",
                            "flipAngleDeg",
                        )
                    }
                ),
            }
        ),
    },
    optional=("keywordSyntax",),
)


@dataclass(frozen=True)
class Special:
    """One name-based special sequence class (first priority of sequenceClass)."""

    cls: str
    keywords: KeywordSet
    image_type_tokens: frozenset[str]


@dataclass(frozen=True)
class WeightingLimits:
    """TR/TE/flip thresholds of one field-strength bucket."""

    t1_tr_max: float
    t1_te_max: float
    long_tr_min: float
    t2_te_min: float
    pd_te_max: float
    gre_t1_te_max: float
    gre_t1_flip_min: float
    gre_t2star_te_min: float


def _tokens(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.upper() for v in values)


@dataclass(frozen=True)
class MrCleanConfig:
    """Validated MR_clean config with keyword lists compiled once; `raw` is the JSON as loaded."""

    raw: Mapping[str, Any]
    source: str
    facts: facts.Vocabulary  # orientation threshold, localizer and derived words: the node-wide decisions
    orientation_names: tuple[tuple[Orientation, KeywordSet], ...]
    dimension_names: tuple[tuple[str, KeywordSet], ...]
    low_field_below: float
    mid_field_below: float
    high_field_from: float
    gauss_above: float
    model_hints: tuple[tuple[KeywordSet, float | None], ...]
    vendors: tuple[tuple[Manufacturer, KeywordSet], ...]
    model_strip: KeywordSet
    fs_scan_options: frozenset[str]
    fs_names: KeywordSet
    fs_negative: KeywordSet
    dixon_markers: KeywordSet
    dixon_tokens: tuple[tuple[DixonOutput, frozenset[str]], ...]
    dixon_names: tuple[tuple[DixonOutput, KeywordSet], ...]
    motion_names: KeywordSet
    specials: tuple[Special, ...]
    b_value_min: float
    dwi_names: KeywordSet
    dti_names: KeywordSet
    diffusion_tokens: frozenset[str]
    bold_names: KeywordSet
    bold_min_volumes: int
    bold_te_range: tuple[float, float]
    dti_min_directions: int
    ir_gre_te_max: float
    flair_min: Mapping[FieldStrength, float]
    stir_range: Mapping[FieldStrength, tuple[float, float]]
    flair_names: KeywordSet
    stir_names: KeywordSet
    tse_etl_min: int
    single_shot_etl_min: int
    spoiled_variants: frozenset[str]
    steady_variants: frozenset[str]
    name_families: tuple[tuple[Family, KeywordSet], ...]
    weighting: Mapping[FieldStrength, WeightingLimits]
    steady_state_weighting: Weighting
    name_weighting: tuple[tuple[Weighting, KeywordSet], ...]
    implied_weighting: tuple[tuple[Weighting, KeywordSet], ...]
    echo_suffix_from: int
    contrast_names: KeywordSet
    contrast_negative: KeywordSet
    agent_none: frozenset[str]
    contrast_never: tuple[str, ...]
    contrast_always: tuple[str, ...]
    ignore_agent_on_all: bool
    propagate: bool
    propagate_prefixes: tuple[str, ...]
    propagate_after: str
    min_group_size: int
    contrast_min_group_size: int
    dyn_exclude_prefixes: tuple[str, ...]
    dyn_exclude_image_types: frozenset[str]
    rounding: Mapping[str, float]


def _location(path: Iterable[Any]) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in path]
    return "".join(parts).lstrip(".") or "<top level>"


def _semantic_errors(raw: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []

    def walk(node: Any, path: list[Any]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])
        elif isinstance(node, str) and node.startswith("re:"):
            try:
                re.compile(node[3:])
            except re.error as exc:
                errors.append(f"At '{_location(path)}': invalid regular expression {node!r}: {exc}")

    walk(raw, [])
    for field, (lo, hi) in raw["sequence"]["inversion"]["stirRangeMs"].items():
        if lo > hi:
            errors.append(f"At 'sequence.inversion.stirRangeMs.{field}': minimum {lo} is above maximum {hi}")
    fs = raw["fieldStrength"]
    if not fs["lowFieldBelowT"] <= fs["midFieldBelowT"] <= fs["highFieldFromT"]:
        errors.append("At 'fieldStrength': need lowFieldBelowT <= midFieldBelowT <= highFieldFromT")
    return errors


def validate(raw: Any, source: str = "<dict>") -> None:
    """Raise MrCleanConfigError listing every problem of a raw config, each with its key path."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    messages = [f"At '{_location(e.absolute_path)}': {e.message}" for e in errors]
    if not messages:
        messages = _semantic_errors(raw)
    if messages:
        raise MrCleanConfigError(f"invalid MR_clean config {source}:\n  " + "\n  ".join(messages))


def compile_config(raw: Mapping[str, Any], source: str = "<dict>") -> MrCleanConfig:
    """Validate a raw config and compile its keyword lists."""
    validate(raw, source)
    seq = raw["sequence"]
    contrast = raw["contrast"]
    dyn = raw["dynamics"]
    dixon = raw["dixon"]
    return MrCleanConfig(
        raw=copy.deepcopy(dict(raw)),
        source=source,
        facts=facts.Vocabulary(
            oblique_threshold=float(raw["orientation"]["obliqueThreshold"]),
            localizer_tokens=_tokens(raw["imageType"]["localizerTokens"]),
            localizer_names=KeywordSet(raw["imageType"]["localizerKeywords"]),
            derived_names=KeywordSet(raw["imageType"]["derivedKeywords"]),
        ),
        orientation_names=tuple((Orientation(k), KeywordSet(v)) for k, v in raw["orientation"]["nameKeywords"].items()),
        dimension_names=tuple((k, KeywordSet(v)) for k, v in raw["dimension"]["nameKeywords"].items()),
        low_field_below=float(raw["fieldStrength"]["lowFieldBelowT"]),
        mid_field_below=float(raw["fieldStrength"]["midFieldBelowT"]),
        high_field_from=float(raw["fieldStrength"]["highFieldFromT"]),
        gauss_above=float(raw["fieldStrength"]["gaussAbove"]),
        model_hints=tuple(
            (KeywordSet([k]), None if v is None else float(v))
            for k, v in sorted(raw["fieldStrength"]["modelHintsT"].items(), key=lambda kv: -len(kv[0]))
        ),
        vendors=tuple((Manufacturer(k), KeywordSet(v)) for k, v in raw["manufacturer"]["vendors"].items()),
        model_strip=KeywordSet(raw["manufacturer"]["modelStripWords"]),
        fs_scan_options=_tokens(raw["fatSuppression"]["scanOptions"]),
        fs_names=KeywordSet(raw["fatSuppression"]["keywords"]),
        fs_negative=KeywordSet(raw["fatSuppression"]["negativeKeywords"]),
        dixon_markers=KeywordSet(dixon["nameMarkers"]),
        dixon_tokens=tuple((DixonOutput(k), _tokens(v)) for k, v in dixon["imageTypeTokens"].items()),
        dixon_names=tuple((DixonOutput(k), KeywordSet(v)) for k, v in dixon["nameKeywords"].items()),
        motion_names=KeywordSet(raw["motionCorrection"]["keywords"]),
        specials=tuple(Special(s["class"], KeywordSet(s["keywords"]), _tokens(s["imageTypeTokens"])) for s in seq["specials"]),
        b_value_min=float(seq["diffusion"]["bValueMin"]),
        dwi_names=KeywordSet(seq["diffusion"]["dwiKeywords"]),
        dti_names=KeywordSet(seq["diffusion"]["dtiKeywords"]),
        diffusion_tokens=_tokens(seq["diffusion"]["imageTypeTokens"]),
        bold_names=KeywordSet(seq["bold"]["keywords"]),
        bold_min_volumes=int(seq["bold"]["minVolumes"]),
        bold_te_range=(float(seq["bold"]["echoTimeMs"][0]), float(seq["bold"]["echoTimeMs"][1])),
        dti_min_directions=int(seq["diffusion"]["dtiMinDirections"]),
        ir_gre_te_max=float(seq["family"]["irGreTeMaxMs"]),
        flair_min={FieldStrength(k): float(v) for k, v in seq["inversion"]["flairMinMs"].items()},
        stir_range={FieldStrength(k): (float(v[0]), float(v[1])) for k, v in seq["inversion"]["stirRangeMs"].items()},
        flair_names=KeywordSet(seq["inversion"]["flairKeywords"]),
        stir_names=KeywordSet(seq["inversion"]["stirKeywords"]),
        tse_etl_min=int(seq["family"]["tseEtlMin"]),
        single_shot_etl_min=int(seq["family"]["singleShotEtlMin"]),
        spoiled_variants=_tokens(seq["family"]["spoiledVariants"]),
        steady_variants=_tokens(seq["family"]["steadyStateVariants"]),
        name_families=tuple((Family(k), KeywordSet(v)) for k, v in seq["family"]["nameFamilies"].items()),
        weighting={
            FieldStrength(k): WeightingLimits(
                v["t1TrMaxMs"],
                v["t1TeMaxMs"],
                v["longTrMinMs"],
                v["t2TeMinMs"],
                v["pdTeMaxMs"],
                v["greT1TeMaxMs"],
                v["greT1FlipMinDeg"],
                v["greT2StarTeMinMs"],
            )
            for k, v in seq["weighting"]["byFieldStrength"].items()
        },
        steady_state_weighting=Weighting(seq["weighting"]["steadyStateWeighting"]),
        name_weighting=tuple((Weighting(k), KeywordSet(v)) for k, v in seq["weighting"]["nameWeighting"].items()),
        implied_weighting=tuple((Weighting(k), KeywordSet(v)) for k, v in seq["weighting"]["impliedWeighting"].items()),
        echo_suffix_from=int(raw["echo"]["suffixFromEcho"]),
        contrast_names=KeywordSet(contrast["keywords"]),
        contrast_negative=KeywordSet(contrast["negativeKeywords"]),
        agent_none=frozenset(v.strip().lower() for v in contrast["agentNoneValues"]),
        contrast_never=tuple(contrast["neverClassPrefixes"]),
        contrast_always=tuple(contrast["alwaysClassPrefixes"]),
        ignore_agent_on_all=bool(contrast["ignoreAgentOnAllSeries"]),
        propagate=bool(contrast["propagation"]["enabled"]),
        propagate_prefixes=tuple(contrast["propagation"]["classPrefixes"]),
        propagate_after=str(contrast["propagation"]["after"]),
        min_group_size=int(dyn["minGroupSize"]),
        contrast_min_group_size=int(dyn["contrastMinGroupSize"]),
        dyn_exclude_prefixes=tuple(dyn["excludeClassPrefixes"]),
        dyn_exclude_image_types=_tokens(dyn["excludeImageTypes"]),
        rounding={k: float(v) for k, v in dyn["rounding"].items()},
    )


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MrCleanConfigError(f"cannot read MR_clean config {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MrCleanConfigError(
            f"invalid MR_clean config {path}: not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from exc


_cache: dict[tuple[str, int], MrCleanConfig] = {}
_cache_lock = threading.Lock()


def load_config(source: str | Path | Mapping[str, Any] | MrCleanConfig | None = None) -> MrCleanConfig:
    """Load and validate a config from a path, a dict (same shape as node/mr_clean/rules.json) or the default file.

    Files are cached by path and modification time, so calling this per study is cheap and a site's
    edit is picked up without a restart.
    """
    if isinstance(source, MrCleanConfig):
        return source
    if isinstance(source, Mapping):
        return compile_config(source)
    path = Path(source) if source is not None else DEFAULT_CONFIG_PATH
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except OSError as exc:
        raise MrCleanConfigError(f"cannot read MR_clean config {path}: {exc}") from exc
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    cfg = compile_config(_read_json(path), str(path))
    with _cache_lock:
        _cache[key] = cfg
    return cfg


def default_config_dict() -> dict[str, Any]:
    """A fresh copy of the default config as a dict, to modify (tests, site tooling) and pass back."""
    raw = _read_json(DEFAULT_CONFIG_PATH)
    assert isinstance(raw, dict)
    return raw
