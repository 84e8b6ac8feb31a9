"""The workbook's header scan: every file's header (never its pixels) into one raw row per instance.

The common encodings go through one walk of node.dicom.reader; pydicom reads the rest. Big studies are
scanned by a pool of processes (a forkserver, so a node full of threads is never forked).

Longer than our ~450-line norm on purpose: the raw-element value decoding (charsets, VRs, private
blocks, sequences) is the scan's inner loop and is kept next to it.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import pandas as pd
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from node.dicom import reader
from node.dicom.charset import decode_text, normalise_charsets
from node.process.workbook.templates import VALID_VRS, Attribute, TagSource, TemplateSet, load_templates

log = logging.getLogger(__name__)

# Raw-frame keys every row carries, shown first on DICOM_Metadata (key, header).
IDENTIFYING: tuple[tuple[str, str], ...] = (
    ("File", "File"),
    ("StudyInstanceUID", "Study Instance UID"),
    ("SeriesInstanceUID", "Series Instance UID"),
    ("SOPInstanceUID", "SOP Instance UID"),
    ("SOPClassUID", "SOP Class UID"),
    ("Modality", "Modality"),
    ("SeriesNumber", "Series Number"),
    ("InstanceNumber", "Instance Number"),
)
ROW_FLAGS = "RowFlags"
# Read for every instance (the series summary needs them) whether or not a template shows them.
SUMMARY_KEYWORDS = (
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "NumberOfFrames",
)
# The per-instance columns node.mr_clean.process_mri_dataframe reads, read for MR even if mr.json drops them.
MR_CLEAN_KEYWORDS = (
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "ImageType",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "EchoTrainLength",
    "EchoNumbers",
    "MagneticFieldStrength",
    "Manufacturer",
    "ManufacturerModelName",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "ContrastBolusAgent",
    "DiffusionBValue",
    "BodyPartExamined",
    "DiffusionGradientOrientation",
    "NumberOfTemporalPositions",
    "TemporalPositionIdentifier",
    "AcquisitionNumber",
)
# Template keys (private, per vendor) MR_clean reads when the MR template provides them.
MR_CLEAN_PRIVATE_KEYS = ("GEDiffusionGradientX", "GEDiffusionGradientY", "GEDiffusionGradientZ")

_GE_BVALUE_OFFSET = 1_000_000_000  # some GE sequences store b + 1e9 in (0043,1039)
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "DS", "IS", "UR"})
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_UNSPLIT_VRS = frozenset({"ST", "LT", "UT", "UR"})
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}

# Below this many files a process pool costs more (start-up, imports) than it saves.
PARALLEL_MIN_FILES = 400
_CHUNK_FILES = 200


@dataclass(frozen=True)
class _ScanPlan:
    """What to read for each modality: picklable, sent once to each worker process."""

    templates: TemplateSet
    extra: tuple[Attribute, ...]  # summary keywords
    mr_extra: tuple[Attribute, ...]  # MR_clean keywords
    fast: bool = True  # try the fast header reader before dcmread

    def attributes_for(self, modality: str | None) -> list[Attribute]:
        template = self.templates.for_modality(modality)
        chosen: dict[str, Attribute] = {a.key: a for a in template.attributes}
        more = self.extra + (self.mr_extra if (modality or "").upper() == "MR" else ())
        for attribute in more:
            chosen.setdefault(attribute.key, attribute)
        return list(chosen.values())


def _keyword_attribute(keyword: str) -> Attribute:
    tag = keyword_dict[keyword]
    vr = dictionary_VR(tag)[:2]
    return Attribute(keyword, keyword, vr, (TagSource((tag,), vr),))


def _make_plan(templates: TemplateSet, fast: bool = True) -> _ScanPlan:
    mr_template = templates.by_modality.get("MR")
    mr_keys = {a.key: a for a in mr_template.attributes} if mr_template else {}
    mr_extra = tuple(mr_keys.get(k) or _keyword_attribute(k) for k in MR_CLEAN_KEYWORDS)
    return _ScanPlan(templates, tuple(_keyword_attribute(k) for k in SUMMARY_KEYWORDS), mr_extra, fast)


_IDENTIFYING_ATTRS = tuple(_keyword_attribute(k) for k, _ in IDENTIFYING if k != "File")


def scan_headers(
    files: Sequence[Path],
    study_root: Path,
    *,
    templates: TemplateSet | None = None,
    templates_dir: Path | None = None,
    workers: int | None = None,
    fast_reader: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    """Read the header (never pixel data) of every file into one raw row per instance.

    Columns are DICOM keywords (template keys for private/sequence entries) plus "File" (path relative to
    study_root) and "RowFlags" (list of flags, e.g. charset fallbacks). Values: str, int, float, lists for
    multi-valued attributes, DA/TM/DT kept as DICOM strings. Returns the frame and warnings (unreadable files).
    fast_reader=False reads every file with pydicom's dcmread (the reference the fast reader is tested against).
    """
    rows, warnings = _scan(files, study_root, templates or load_templates(templates_dir), workers, fast_reader)
    return _instances_frame(rows), warnings


def _instances_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    # dtype=object keeps every value as scanned: ints stay ints next to missing values, UIDs stay str.
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for key in ("File", *(a.key for a in _IDENTIFYING_ATTRS), ROW_FLAGS):
        if key not in columns:
            columns.append(key)
    return pd.DataFrame(rows, columns=columns, dtype=object)


def _scan(
    files: Sequence[Path], study_root: Path, templates: TemplateSet, workers: int | None, fast_reader: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (sorted) and warnings; the work behind scan_headers."""
    plan = _make_plan(templates, fast_reader)
    root = str(study_root)
    names = [str(f) for f in files]
    n_workers = _choose_workers(len(names), workers)
    rows: list[dict[str, Any]] = []
    if n_workers <= 1:
        rows = _scan_chunk(names, root, plan)
    else:
        chunks = [names[i : i + _CHUNK_FILES] for i in range(0, len(names), _CHUNK_FILES)]
        try:
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=_pool_context()) as pool:
                for part in pool.map(_scan_chunk, chunks, [root] * len(chunks), [plan] * len(chunks)):
                    rows.extend(part)
        except (BrokenProcessPool, OSError, RuntimeError, AssertionError):
            # A pool that cannot start (daemonic parent, limits) or dies (OOM killer) costs speed, not the study.
            log.exception("header scan process pool failed; scanning %d files in this process", len(names))
            rows = _scan_chunk(names, root, plan)
    warnings = [str(r["_error"]) for r in rows if "_error" in r]
    good = sorted((r for r in rows if "_error" not in r), key=_instance_order)
    return good, warnings


def _pool_context() -> BaseContext:
    # Not fork: the node runs threads (SCP, scheduler) whose locks a forked child would inherit mid-state.
    # A forkserver starts clean once per node process and preloads this module, so later pools start in
    # milliseconds instead of re-importing pydicom and pandas in every worker as spawn would.
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _choose_workers(n_files: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    if n_files < PARALLEL_MIN_FILES:
        return 1
    return max(1, min(os.cpu_count() or 1, 4))


def _sort_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.inf
    return float(value)


def _instance_order(row: Mapping[str, Any]) -> tuple[float, str, float, str, str]:
    """Deterministic row order: series number, series UID, instance number, SOP UID, file."""
    return (
        _sort_number(row.get("SeriesNumber")),
        str(row.get("SeriesInstanceUID") or ""),
        _sort_number(row.get("InstanceNumber")),
        str(row.get("SOPInstanceUID") or ""),
        str(row.get("File")),
    )


def _relative(name: str, root: Path) -> str:
    path = Path(name)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _scan_chunk(names: Sequence[str], root: str, plan: _ScanPlan) -> list[dict[str, Any]]:
    root_path = Path(root)
    prefix = root.rstrip("/") + "/"
    per_modality: dict[str, list[Attribute]] = {}
    rows = []
    for name in names:
        # Plain string work: pathlib costs more per file than reading the header's 80 elements.
        rel = name[len(prefix) :] if name.startswith(prefix) and os.sep == "/" else _relative(name, root_path)
        rows.append(_scan_file(name, rel, plan, per_modality))
    return rows


def _scan_file(name: str, rel: str, plan: _ScanPlan, per_modality: dict[str, list[Attribute]]) -> dict[str, Any]:
    try:
        reader = _HeaderReader(*_read_header(name, plan.fast))
    except (InvalidDicomError, OSError, EOFError, ValueError, struct.error, KeyError, TypeError) as exc:
        return {"_error": f"UNREADABLE: {rel}: {type(exc).__name__}: {exc}"}
    except Exception as exc:
        # pydicom can fail in unplanned ways on malformed input; one such file must not cost the study.
        log.exception("unexpected error reading the header of %s", rel)
        return {"_error": f"UNREADABLE: {rel}: {type(exc).__name__}: {exc}"}
    row: dict[str, Any] = {"File": rel}
    for attribute in _IDENTIFYING_ATTRS:
        row[attribute.key] = reader.read(attribute)
    if not row["SOPInstanceUID"] and not row["StudyInstanceUID"]:
        return {"_error": f"UNREADABLE: {rel}: not a DICOM instance (no SOP/Study Instance UID)"}
    modality = row.get("Modality")
    modality_key = modality.upper() if isinstance(modality, str) else ""
    attributes = per_modality.get(modality_key)
    if attributes is None:
        attributes = per_modality[modality_key] = plan.attributes_for(modality_key)
    elements = reader.elements
    for attribute in attributes:
        if attribute.key in row:
            continue
        if attribute.simple_tag is not None and attribute.simple_tag not in elements:
            row[attribute.key] = None  # the common case: not in this file, nothing to try
            continue
        row[attribute.key] = reader.read(attribute)
    row[ROW_FLAGS] = reader.flags
    return row


_Elements = dict[int, DataElement | RawDataElement]


def _read_header(path: str, fast: bool = True) -> tuple[_Elements, Dataset | None]:
    """Top-level elements keyed by plain int tag, and the Dataset when dcmread built one."""
    if fast:
        elements = _fast_header(path)
        if elements is not None:
            return elements, None
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # Files without the 128-byte preamble are still DICOM; force and check UIDs afterwards.
        ds = dcmread(path, stop_before_pixels=True, force=True)
    return {int(e.tag): e for e in ds.elements()}, ds


# The common encodings (explicit and implicit VR little endian, including every encapsulated transfer syntax)
# are read by one walk of node.dicom.reader, about 4x faster than dcmread: raw elements are sliced out of the
# mapped file and pydicom converts them on access exactly as if it had read them. Anything else (big endian,
# deflate, no preamble, malformed lengths) returns None and goes through dcmread.
_UNSUPPORTED_FAST_SYNTAXES = frozenset({reader.EXPLICIT_VR_BE, reader.DEFLATED_VR_LE})


def _accept_fast(meta: reader.FileMeta) -> bool:
    return bool(meta.transfer_syntax) and meta.transfer_syntax not in _UNSUPPORTED_FAST_SYNTAXES


def _fast_header(path: str | Path) -> _Elements | None:
    try:
        # raw: the walk itself records RawDataElements (plain int tags: pydicom's DataElement turns them into
        # a BaseTag if an element is ever converted), so there is no second pass over the elements.
        read = reader.read_header(path, _accept_fast, raw=True)
        if read is None:
            return None
        meta, found, buf = read
        pos = meta.dataset_offset
        if meta.transfer_syntax == reader.IMPLICIT_VR_LE and buf[pos + 4 : pos + 6].decode("latin-1") in VALID_VRS:
            return None  # declared implicit but written explicit: dcmread detects and handles that
        if found.truncated or found.unsupported:
            return None  # dcmread's leniency decides (e.g. UN of undefined length)
        elements: _Elements = found.elements
        return elements
    except (OSError, struct.error, UnicodeDecodeError, ValueError):  # reader.ReadError is a ValueError
        return None


class _HeaderReader:
    """Reads template attributes from one dataset's raw elements; collects the row's flags."""

    def __init__(self, elements: _Elements, ds: Dataset | None) -> None:
        # Plain-int keys: a dict lookup by BaseTag runs its Python-level __eq__, ~90 times per file.
        self.elements = elements
        self._ds = ds
        charset = self.elements.get(0x00080005)
        self.charsets = normalise_charsets(None if charset is None else charset.value)
        self.flags: list[str] = []
        self._creators: dict[int, dict[str, int]] | None = None

    @property
    def ds(self) -> Dataset:
        """A pydicom Dataset over the same raw elements, built on first use (sequences need pydicom)."""
        if self._ds is None:
            self._ds = Dataset({
                BaseTag(tag): elem._replace(tag=BaseTag(tag)) if isinstance(elem, RawDataElement) else elem
                for tag, elem in self.elements.items()
            })
        return self._ds

    def read(self, attribute: Attribute) -> Any:
        """The attribute's value: from its first source that has one; None when none has."""
        for source in attribute.sources:
            try:
                if len(source.path) == 1 and source.creator is None:
                    # Fast path (almost every attribute): one top-level element, no private block.
                    raw = self.elements.get(source.path[0])
                    if raw is None:
                        continue
                    vr = _element_vr(raw, source)
                    if vr == "SQ":
                        value = _summarise_sequence(self.ds[source.path[0]].value)
                    else:
                        value = _element_value(raw, vr, self.charsets, attribute.key, self.flags)
                else:
                    values = [
                        v
                        for v in self._values(None, source, source.path, self.charsets, attribute.key)
                        if v is not None and v != "" and v != []
                    ]
                    value = _merge_item_values(values)
            except (ValueError, KeyError, TypeError, struct.error, UnicodeError) as exc:
                self.flags.append(f"UNREADABLE_VALUE: {attribute.key}: {type(exc).__name__}")
                continue
            if value is None or value == "" or value == []:
                continue
            return _apply_transform(value, source.transform)
        return None

    def _private_tag(self, ds: Dataset | None, group: int, creator: str, offset: int) -> int | None:
        if ds is not None:
            try:
                return int(ds.private_block(group, creator).get_tag(offset))
            except KeyError:
                return None
        if self._creators is None:
            # One pass over the elements for every private group (templates ask for several per file).
            self._creators = {}
            for tag, raw in self.elements.items():
                if tag >> 16 & 1 and 0x10 <= (tag & 0xFFFF) <= 0xFF:
                    name = raw.value.decode("latin-1") if isinstance(raw.value, bytes) else raw.value
                    if isinstance(name, str):
                        self._creators.setdefault(tag >> 16, {}).setdefault(name.strip(" \x00"), tag & 0xFF)
        block = self._creators.get(group, {}).get(creator)
        return None if block is None else (group << 16) | (block << 8) | offset

    def _values(
        self, ds: Dataset | None, source: TagSource, path: tuple[int, ...], charsets: list[str], key: str
    ) -> Iterator[Any]:
        """Values of the source in ds (None: the top level): one for a plain tag, one per item along a path."""
        tag: int | None = path[0]
        if source.creator is not None:
            tag = self._private_tag(ds, path[0] >> 16, source.creator, path[0] & 0xFF)
        if tag is None:
            return
        raw = self.elements.get(tag) if ds is None else ds.get_item(BaseTag(tag))
        if raw is None:
            return
        vr = _element_vr(raw, source)
        if len(path) > 1 or vr == "SQ":
            items = (self.ds if ds is None else ds)[tag].value
            if len(path) == 1:
                yield _summarise_sequence(items)
                return
            for item in items:
                item_charsets = normalise_charsets(item.get("SpecificCharacterSet")) or charsets
                yield from self._values(item, source, path[1:], item_charsets, key)
            return
        yield _element_value(raw, vr, charsets, key, self.flags)


def _merge_item_values(values: list[Any]) -> Any:
    """One value from the values a path found in several items: the value if all items agree, else the
    list of distinct values in item order."""
    distinct: list[Any] = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    if len(distinct) <= 1:
        return distinct[0] if distinct else None
    return distinct


def _apply_transform(value: Any, transform: str | None) -> Any:
    if transform is None:
        return value
    first = value[0] if isinstance(value, list) and value else value
    if transform == "ge_bvalue" and isinstance(first, int | float):
        return type(first)(first % _GE_BVALUE_OFFSET) if first >= _GE_BVALUE_OFFSET else first
    return first


def _summarise_sequence(items: Sequence[Dataset]) -> Any:
    """A whole sequence in one cell: its items' CodeMeanings when they are code items, else the item count."""
    meanings = [str(item.CodeMeaning) for item in items if "CodeMeaning" in item]
    if items and len(meanings) == len(items):
        return meanings[0] if len(meanings) == 1 else meanings
    return f"{len(items)} item(s)" if items else None


def _element_vr(raw: DataElement | RawDataElement, source: TagSource) -> str:
    vr = raw.VR
    if vr is None or vr == "UN":
        if (raw.tag >> 16) % 2 == 1:
            return source.vr if source.vr != "UN" else "UN"
        try:
            return dictionary_VR(raw.tag)[:2]
        except KeyError:
            return source.vr
    return str(vr)[:2]


def _element_value(raw: DataElement | RawDataElement, vr: str, charsets: list[str], key: str, flags: list[str]) -> Any:
    if isinstance(raw, DataElement):
        return _python_value(raw.value)
    data = raw.value
    if not data:
        return None
    if vr in _ASCII_VRS:
        text = data.decode("latin-1").strip(" \x00")
        parts = [text] if vr in _UNSPLIT_VRS else [p.strip(" \x00") for p in text.split("\\")]
        return _single([_number(p, vr) for p in parts])
    if vr in _CHARSET_VRS:
        decoded = decode_text(data, charsets, vr)
        if decoded.fallback:
            flags.append(f"CHARSET_FALLBACK: {key}: {decoded.fallback}")
        if vr in _UNSPLIT_VRS:
            return decoded.text
        parts = [p.strip(" ") for p in decoded.text.split("\\")]
        if vr == "PN":
            parts = [p.rstrip("=^") for p in parts]
        return _single(parts)
    fmt = _BINARY_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        endian = "<" if raw.is_little_endian else ">"
        count = len(data) // size
        return _single(list(struct.unpack(f"{endian}{count}{fmt}", data[: count * size])))
    if vr == "AT":
        endian = "<" if raw.is_little_endian else ">"
        words = struct.unpack(f"{endian}{len(data) // 2}H", data[: len(data) // 2 * 2])
        return _single([f"({words[i]:04X},{words[i + 1]:04X})" for i in range(0, len(words) - 1, 2)])
    return f"<{len(data)} bytes>"


def _single(values: list[Any]) -> Any:
    if len(values) == 1:
        return None if values[0] == "" else values[0]
    # Empty values inside a multi-valued attribute keep their position (ImageType value 3 may be empty).
    return values if any(v != "" for v in values) else None


def _number(text: str, vr: str) -> Any:
    if vr == "DS":
        try:
            value = float(text)
        except ValueError:
            return text
        return value if math.isfinite(value) else text
    if vr == "IS":
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                return text
            return int(as_float) if as_float.is_integer() else as_float
    return text


def _python_value(value: Any) -> Any:
    """A value pydicom already converted, in raw-frame form."""
    if isinstance(value, MultiValue | list | tuple):
        return _single([_python_value(v) for v in value])
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value.strip() if isinstance(value, str) else value
    return str(value) if value is not None else None
