"""Tag templates (tag_templates/*.json or processing.templates_dir): the workbook columns per modality, checked on load."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict

# Shipped with the package (package data), so an installed node finds them wherever it runs from.
TEMPLATES_DIR = Path(str(resources.files("node.process.workbook") / "tag_templates"))
DEFAULT_MODALITY = "*"
TRANSFORMS = ("first", "ge_bvalue")
VALID_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV"}
    | {"OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
)
_TAG_RE = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class TemplateError(ValueError):
    """A tag template is invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class TagSource:
    """Where one value is read: a path of sequence tags ending in the value's tag, maybe a private block."""

    path: tuple[int, ...]
    vr: str
    creator: str | None = None
    transform: str | None = None


@dataclass(frozen=True)
class Attribute:
    """One template entry: raw-frame key, display column, VR, and its sources (the first non-empty wins)."""

    key: str
    column: str
    vr: str
    sources: tuple[TagSource, ...]

    @cached_property
    def simple_tag(self) -> int | None:
        """The tag when the attribute is one plain top-level element with no fallbacks, else None."""
        if len(self.sources) == 1 and len(self.sources[0].path) == 1 and self.sources[0].creator is None:
            return self.sources[0].path[0]
        return None


@dataclass(frozen=True)
class Template:
    """The attributes shown for some modalities."""

    name: str
    description: str
    modalities: tuple[str, ...]
    attributes: tuple[Attribute, ...]


@dataclass(frozen=True)
class TemplateSet:
    """All templates of a directory, with the modality -> template lookup."""

    templates: tuple[Template, ...]
    by_modality: Mapping[str, Template]

    def for_modality(self, modality: str | None) -> Template:
        """The template for a modality, or the default one ("*")."""
        return self.by_modality.get((modality or "").upper(), self.by_modality[DEFAULT_MODALITY])


def load_templates(templates_dir: Path | None = None) -> TemplateSet:
    """Load and validate every *.json template of a directory; raise TemplateError listing all problems."""
    folder = Path(templates_dir) if templates_dir is not None else TEMPLATES_DIR
    files = sorted(folder.glob("*.json"))
    if not files:
        raise TemplateError(f"{folder}: no *.json tag templates found")
    errors: list[str] = []
    templates: list[Template] = []
    by_modality: dict[str, Template] = {}
    claimed: dict[str, str] = {}
    for path in files:
        template, problems = _parse_template(path)
        errors.extend(problems)
        if template is None:
            continue
        templates.append(template)
        for modality in template.modalities:
            if modality in claimed:
                errors.append(f"{path.name}: modality {modality!r} is already claimed by {claimed[modality]}")
                continue
            claimed[modality] = path.name
            by_modality[modality] = template
    if not errors and DEFAULT_MODALITY not in by_modality:
        errors.append(f'{folder}: no default template (one file must list "modalities": ["*"])')
    if errors:
        raise TemplateError(f"invalid tag templates in {folder}:\n  " + "\n  ".join(errors))
    return TemplateSet(tuple(templates), by_modality)


def _parse_template(path: Path) -> tuple[Template | None, list[str]]:
    name = path.name
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{name}: cannot read: {exc}"]
    except json.JSONDecodeError as exc:
        return None, [f"{name}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}"]
    if not isinstance(doc, dict):
        return None, [f"{name}: top level must be an object"]
    errors: list[str] = []
    unknown_top = set(doc) - {"description", "modalities", "attributes"}
    if unknown_top:
        errors.append(f"{name}: unknown top-level key(s) {sorted(unknown_top)}")
    modalities = doc.get("modalities")
    if not isinstance(modalities, list) or not modalities or not all(isinstance(m, str) and m for m in modalities):
        errors.append(f'{name}: "modalities" must be a non-empty list of modality codes (or "*")')
        modalities = []
    entries = doc.get("attributes")
    if not isinstance(entries, list) or not entries:
        errors.append(f'{name}: "attributes" must be a non-empty list')
        entries = []
    attributes: list[Attribute] = []
    keys: dict[str, int] = {}
    columns: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"{name}: attributes[{i}]"
        attribute, problems = _parse_attribute(entry, where)
        errors.extend(problems)
        if attribute is None:
            continue
        if attribute.key in keys:
            errors.append(f"{where}: {attribute.key!r} is already listed at attributes[{keys[attribute.key]}]")
            continue
        if attribute.column in columns:
            errors.append(f"{where}: column {attribute.column!r} is already used by attributes[{columns[attribute.column]}]")
            continue
        keys[attribute.key] = i
        columns[attribute.column] = i
        attributes.append(attribute)
    if errors:
        return None, errors
    description = str(doc.get("description", ""))
    return Template(path.stem, description, tuple(m.upper() for m in modalities), tuple(attributes)), []


def _parse_attribute(entry: object, where: str) -> tuple[Attribute | None, list[str]]:
    if not isinstance(entry, dict):
        return None, [f"{where}: must be an object"]
    allowed = {"keyword", "tag", "creator", "vr", "key", "column", "transform", "fallbacks"}
    unknown = set(entry) - allowed
    if unknown:
        return None, [f"{where}: unknown field(s) {sorted(unknown)}"]
    errors: list[str] = []
    source, problems = _parse_source(entry, where)
    errors.extend(problems)
    fallbacks: list[TagSource] = []
    raw_fallbacks = entry.get("fallbacks", [])
    if not isinstance(raw_fallbacks, list):
        errors.append(f'{where}: "fallbacks" must be a list')
        raw_fallbacks = []
    for j, fb in enumerate(raw_fallbacks):
        fb_where = f"{where}.fallbacks[{j}]"
        if not isinstance(fb, dict) or set(fb) - {"keyword", "tag", "creator", "vr", "transform"}:
            errors.append(f"{fb_where}: must be an object with keyword or tag (+ creator, vr, transform)")
            continue
        fb_source, fb_problems = _parse_source(fb, fb_where)
        errors.extend(fb_problems)
        if fb_source is not None:
            fallbacks.append(fb_source)
    if errors or source is None:
        return None, errors
    if "keyword" in entry:
        key = str(entry.get("key", entry["keyword"]))
    else:
        key = str(entry.get("key", ""))
        if not key:
            return None, [f'{where}: a private "tag" entry needs a "key" (its column name in the raw frame)']
    if not _KEY_RE.fullmatch(key.replace(".", "_")):
        return None, [f"{where}: key {key!r} must be an identifier"]
    if "key" in entry and entry["key"] in keyword_dict and entry["key"] != entry.get("keyword"):
        return None, [f"{where}: key {entry['key']!r} is a DICOM keyword of another attribute"]
    column = entry.get("column", key)
    if not isinstance(column, str) or not column.strip():
        return None, [f'{where}: "column" must be a non-empty string']
    return Attribute(key, column.strip(), source.vr, (source, *fallbacks)), []


def _parse_source(entry: Mapping[str, Any], where: str) -> tuple[TagSource | None, list[str]]:
    has_keyword, has_tag = "keyword" in entry, "tag" in entry
    if has_keyword == has_tag:
        return None, [f'{where}: give exactly one of "keyword" or "tag"']
    transform = entry.get("transform")
    if transform is not None and transform not in TRANSFORMS:
        return None, [f"{where}: unknown transform {transform!r} (known: {', '.join(TRANSFORMS)})"]
    vr_override = entry.get("vr")
    if vr_override is not None and vr_override not in VALID_VRS:
        return None, [f"{where}: unknown VR {vr_override!r}"]
    if has_keyword:
        keyword = entry["keyword"]
        if not isinstance(keyword, str):
            return None, [f"{where}: keyword must be a string"]
        path: list[int] = []
        parts = keyword.split(".")
        for n, part in enumerate(parts):
            if part not in keyword_dict:
                return None, [f"{where}: unknown DICOM keyword {part!r}" + (f" in {keyword!r}" if len(parts) > 1 else "")]
            tag = keyword_dict[part]
            if n < len(parts) - 1 and dictionary_VR(tag) != "SQ":
                return None, [f"{where}: {part!r} in {keyword!r} is not a sequence"]
            path.append(tag)
        vr = vr_override or dictionary_VR(path[-1])[:2]
        if "creator" in entry:
            return None, [f'{where}: "creator" only applies to private "tag" entries']
        return TagSource(tuple(path), vr, None, transform), []
    m = _TAG_RE.fullmatch(str(entry["tag"]))
    if not m:
        return None, [f"{where}: tag {entry['tag']!r} is not of the form (gggg,eeee)"]
    group, elem = int(m[1], 16), int(m[2], 16)
    creator = entry.get("creator")
    if group % 2 == 1:
        if creator is not None and (not isinstance(creator, str) or not creator):
            return None, [f"{where}: creator must be a non-empty string"]
        if vr_override is None:
            return None, [f'{where}: private tag {entry["tag"]} needs a "vr" (implicit VR files do not carry one)']
        return TagSource(((group << 16) | elem,), vr_override, creator, transform), []
    if creator is not None:
        return None, [f'{where}: "creator" only applies to private tags']
    tag = (group << 16) | elem
    try:
        vr = vr_override or dictionary_VR(tag)[:2]
    except KeyError:
        return None, [f"{where}: tag {entry['tag']} is not in the DICOM dictionary; give its \"vr\""]
    return TagSource((tag,), vr, None, transform), []
