"""Request files (YAML, or CSV of accession numbers): parse, validate against a schema, report every error with its location."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import jsonschema
import yaml

from node.dicom import facts
from node.pull import patterns

OUTPUTS = ("excel", "nifti")  # what a request gets when it names none
# npz: NumPy arrays instead of (or with) NIfTI; excel_merged: one workbook of all the request's studies, when done.
ALL_OUTPUTS = ("excel", "nifti", "npz", "excel_merged")
_DATE_RANGE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")
_ID_TEXT = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[^\\\x00-\x1f*?]*$"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["studies"],
    "properties": {
        "peer": {"type": "string", "minLength": 1, "description": "A peer named in the config (default: the first)."},
        "studies": {
            "type": "array",
            "minItems": 1,
            "maxItems": 10000,
            "description": "Each entry is one STUDY-level C-FIND.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "accession": _ID_TEXT,
                    "patient_id": _ID_TEXT,
                    "study_date": {"type": ["string", "integer"]},
                    "modality": {"type": "string", "pattern": r"^[A-Z0-9]{1,16}\Z"},
                    "study_uid": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)*\Z", "maxLength": 64},
                },
                "oneOf": [{"required": ["accession"]}, {"required": ["patient_id"]}, {"required": ["study_uid"]}],
            },
        },
        "series_filter": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "modality": {"type": "array", "items": {"type": "string", "pattern": r"^[A-Z0-9]{1,16}\Z"}, "minItems": 1},
                "exclude_derived": {"type": "boolean"},
                "min_instances": {"type": "integer", "minimum": 0},
                "include": {"type": "array", "items": {"type": "string"}},
                "exclude": {"type": "array", "items": {"type": "string"}},
            },
        },
        "outputs": {"type": "array", "items": {"enum": list(ALL_OUTPUTS)}, "minItems": 1, "uniqueItems": True},
        "not_before": {"type": ["string", "object"]},
        "priority": {"type": "integer", "minimum": -100, "maximum": 100},
    },
}


class RequestError(Exception):
    """A request file is invalid; `problems` lists every problem with its location."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True)
class StudyQuery:
    """One STUDY-level query: an accession number, or a patient ID with an optional date range and modality."""

    accession: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    modality: str | None = None
    study_uid: str | None = None  # one study picked by its UID (the web page's selection of a search result)

    def dicom_query(self) -> dict[str, str]:
        """The C-FIND identifier values (DICOM keywords)."""
        if self.study_uid is not None:
            return {"StudyInstanceUID": self.study_uid}
        if self.accession is not None:
            return {"AccessionNumber": self.accession}
        query = {"PatientID": self.patient_id or ""}
        if self.study_date:
            query["StudyDate"] = self.study_date
        if self.modality:
            query["ModalitiesInStudy"] = self.modality
        return query

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("accession", self.accession), ("patient_id", self.patient_id),
                                  ("study_date", self.study_date), ("modality", self.modality),
                                  ("study_uid", self.study_uid)) if v is not None}

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.as_dict().items())


@dataclass(frozen=True)
class SeriesFilter:
    modality: tuple[str, ...] = ()
    exclude_derived: bool = False
    min_instances: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def verdict(self, series: Mapping[str, Any], instances: int, vocab: facts.Vocabulary | None = None) -> str | None:
        """None if the series is kept, otherwise why it is skipped. series: SERIES-level C-FIND keys."""
        modality = str(series.get("Modality") or "")
        description = str(series.get("SeriesDescription") or "")
        if self.modality and modality not in self.modality:
            return f"modality {modality or '?'} not in {list(self.modality)}"
        if self.exclude_derived:
            why = derived_reason(series, vocab)
            if why:
                return f"derived: {why}"
        if instances < self.min_instances:
            return f"{instances} instance(s) < min_instances {self.min_instances}"
        if self.include and not any(patterns.search(p, description) for p in self.include):
            return f"description {description!r} matches no include pattern"
        for pattern in self.exclude:
            if patterns.search(pattern, description):
                return f"description {description!r} matches exclude pattern {pattern!r}"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"modality": list(self.modality), "exclude_derived": self.exclude_derived,
                "min_instances": self.min_instances, "include": list(self.include), "exclude": list(self.exclude)}


def derived_reason(series: Mapping[str, Any], vocab: facts.Vocabulary | None = None) -> str | None:
    """Why a series is not an acquisition (reformat, render, screen capture, dose report), or None."""
    image_type = [str(v).upper() for v in (series.get("ImageType") or [])]
    kind, why = facts.derivation(
        image_type, str(series.get("SeriesDescription") or ""), str(series.get("Modality") or ""), vocab
    )
    return why if kind is facts.Derivation.SECONDARY else None


@dataclass(frozen=True)
class Request:
    """A validated request: what to find, what to keep, what to produce and when."""

    name: str
    sha256: str
    peer: str
    studies: tuple[StudyQuery, ...]
    series_filter: SeriesFilter = field(default_factory=SeriesFilter)
    outputs: tuple[str, ...] = OUTPUTS
    not_before: datetime | None = None
    priority: int = 0


def _location(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _yaml_position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates and times as the text the user wrote: an impossible unquoted date
    (2025-13-45) must become a located error of the request, not an exception inside the YAML parser."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


MAX_NESTING = 16  # a request is three levels deep; a file nested thousands deep is refused before it is built


def _load_yaml(text: str) -> Any:
    """Parse YAML; aliases are refused because a few lines of them can expand into millions of nodes, and
    nesting deeper than MAX_NESTING because building it would recurse thousands deep (one such file stalled
    the inbox). Both are seen in one pass over the events, which stops at the first offence."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=_Loader):
            mark = event.start_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
            if isinstance(event, yaml.AliasEvent):
                raise RequestError([f"At {where}: YAML aliases (*name) are not allowed in request files"])
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_NESTING:
                    raise RequestError([f"At {where}: nested deeper than {MAX_NESTING} levels; a request file is "
                                        "a list of studies with a few options"])
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader without timestamps
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise RequestError([f"At {_yaml_position(exc)}: YAML syntax error: {problem}"]) from None


def decode(raw: bytes, max_bytes: int) -> str:
    """Request bytes as text, or RequestError (too big, binary, not UTF-8)."""
    if len(raw) > max_bytes:
        raise RequestError([f"At '<file>': {len(raw)} bytes is larger than the limit of {max_bytes} bytes "
                            "(requests.max_file_bytes)"])
    if not raw.strip():
        raise RequestError(["At '<file>': the file is empty"])
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        # UTF-16 with its byte order mark (what some Windows editors save): accepted as such.
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise RequestError([f"At byte {exc.start}: not valid UTF-16 text (the file starts with a UTF-16 "
                                "byte order mark)"]) from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        hint = " (UTF-16 without a byte order mark? save it as UTF-8)" if nul in (0, 1) else ""
        raise RequestError([f"At byte {nul}: NUL byte: this is a binary file, not a YAML or CSV request{hint}"])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestError([f"At byte {exc.start}: not UTF-8 text (binary file, or another encoding)"]) from None


def _parse_not_before(value: Any) -> datetime:
    """ISO date-time; naive values are local time. Raises ValueError with the reason."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time())
    else:
        parsed = datetime.fromisoformat(str(value).strip())
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


def _valid_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y%m%d")  # noqa: DTZ007 - a calendar date check, no time zone involved
    except ValueError:
        return False
    return True


def date_problem(value: str) -> str | None:
    """Why value is not a DICOM date or date range (the request files' and the web search's rule), or None."""
    m = _DATE_RANGE.fullmatch(value)
    if not value or not m or (m.group(1) is None and m.group(3) is None) or (m.group(2) is None and m.group(3)):
        return f"{value!r} is not YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD"
    for part in (m.group(1), m.group(3)):
        if part and not _valid_date(part):
            return f"{part!r} is not a calendar date"
    if m.group(1) and m.group(3) and m.group(1) > m.group(3):
        return f"the range {value!r} ends before it starts"
    return None


def validate(data: Any, name: str, sha256: str, peers: Sequence[str]) -> Request:
    """Check parsed request data against the schema and the config; RequestError lists every problem."""
    if not isinstance(data, dict):
        kind = "nothing" if data is None else type(data).__name__
        raise RequestError([f"At '<top level>': expected a mapping with a 'studies' list, got {kind}"])
    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = []
    for err in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        message = err.message
        if err.validator == "oneOf" and isinstance(err.instance, dict):
            message = "each study needs exactly one of 'accession', 'patient_id' or 'study_uid'"
        elif err.validator == "additionalProperties" and err.validator_value is False:
            allowed = sorted(err.schema.get("properties", {}))
            message = f"{message}; allowed keys: {', '.join(allowed)}"
        elif err.validator == "type" and err.absolute_path and err.absolute_path[-1] in ("accession", "patient_id"):
            message += " (quote it: YAML reads 0012345 as a number and drops the zeros)"
        problems.append(f"At '{_location(list(err.absolute_path))}': {message}")
    if problems:
        raise RequestError(problems)
    peer = data.get("peer", peers[0] if peers else "")
    if peer not in peers:
        problems.append(f"At 'peer': unknown peer {peer!r}; configured peers: {', '.join(peers)}")
    studies = []
    for i, entry in enumerate(data["studies"]):
        study_date = entry.get("study_date")
        if study_date is not None:
            # YAML dates (2025-01-31), alone or on either side of a range, are accepted as DICOM dates.
            study_date = _ISO_DATE.sub(r"\1\2\3", str(study_date).strip())
            problem = date_problem(study_date)
            if problem:
                problems.append(f"At 'studies[{i}].study_date': {problem}")
        for alone in ("accession", "study_uid"):
            if alone in entry and ("study_date" in entry or "modality" in entry):
                problems.append(f"At 'studies[{i}]': study_date and modality go with patient_id, not with {alone}")
        studies.append(StudyQuery(entry.get("accession"), entry.get("patient_id"), study_date, entry.get("modality"),
                                  entry.get("study_uid")))
    f = data.get("series_filter") or {}
    for key in ("include", "exclude"):
        for j, pattern in enumerate(f.get(key, [])):
            why = patterns.problem(pattern)
            if why:
                problems.append(f"At 'series_filter.{key}[{j}]': {why}")
    not_before = None
    if "not_before" in data:
        try:
            not_before = _parse_not_before(data["not_before"])
        except (ValueError, TypeError) as exc:
            problems.append(f"At 'not_before': {data['not_before']!r} is not an ISO date-time ({exc})")
    if problems:
        raise RequestError(problems)
    return Request(
        name=name,
        sha256=sha256,
        peer=peer,
        studies=tuple(dict.fromkeys(studies)),  # the same study asked twice is queried once
        series_filter=SeriesFilter(
            modality=tuple(f.get("modality", ())),
            exclude_derived=bool(f.get("exclude_derived", False)),
            min_instances=int(f.get("min_instances", 0)),
            include=tuple(f.get("include", ())),
            exclude=tuple(f.get("exclude", ())),
        ),
        outputs=tuple(data.get("outputs", OUTPUTS)),
        not_before=not_before,
        priority=int(data.get("priority", 0)),
    )


_ACCESSION_COLUMNS = {"accession", "accessionnumber", "accession_number", "accession number", "accession no", "acc"}


def _csv_data(text: str) -> tuple[dict[str, Any], list[int]]:
    """A CSV with an accession-number column (comma, semicolon or tab separated) as request data."""
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    column = next((i for i, h in enumerate(header) if h in _ACCESSION_COLUMNS), None)
    if column is None:
        found = ", ".join(repr(h) for h in header) or "nothing"
        raise RequestError([f"At line 1: no accession-number column (a header such as 'AccessionNumber'; found {found})"])
    studies: list[dict[str, Any]] = []
    lines: list[int] = []
    problems = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        value = row[column].strip() if column < len(row) else ""
        if not value:
            problems.append(f"At line {line}: empty accession number")
        else:
            studies.append({"accession": value})
            lines.append(line)
    if problems:
        raise RequestError(problems)
    if not studies:
        raise RequestError(["At line 2: no accession numbers below the header"])
    return {"studies": studies}, lines


def parse(filename: str, raw: bytes, peers: Sequence[str], max_bytes: int = 1_048_576, name: str | None = None) -> Request:
    """Parse and validate a request file's bytes (YAML, or CSV by extension); RequestError on any problem."""
    text = decode(raw, max_bytes)
    sha = hashlib.sha256(raw).hexdigest()
    stem = name or filename.rsplit(".", 1)[0]
    if filename.lower().endswith(".csv"):
        data, lines = _csv_data(text)
        try:
            request = validate(data, stem, sha, peers)
        except RequestError as exc:
            # A CSV has no keys: name the line of each bad accession instead of studies[i].
            raise RequestError([re.sub(r"At 'studies\[(\d+)\](\.accession)?'", lambda m: f"At line {lines[int(m.group(1))]}", p)
                                for p in exc.problems]) from None
        return request
    return validate(_load_yaml(text), stem, sha, peers)


def render(accessions: Sequence[str], peer: str | None = None, outputs: Sequence[str] | None = None,
           priority: int | None = None, not_before: str | None = None) -> str:
    """A well-formed request file (YAML text) for a list of accession numbers."""
    data: dict[str, Any] = {}
    if peer:
        data["peer"] = peer
    data["studies"] = [{"accession": a} for a in accessions]
    if outputs:
        data["outputs"] = list(outputs)
    if priority is not None:
        data["priority"] = priority
    if not_before:
        data["not_before"] = not_before
    return "# written by `daemon.py request`\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
