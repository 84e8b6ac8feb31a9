"""What the web pages and the JSON API do, in one place: search a peer, ask for studies, cancel, retry, list, read.

Every action goes through the node's own paths (the inbox's validation, the scheduler, the store's state); the
HTTP layer only translates. C-FIND runs here on the request's worker thread, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from node.config import Config
from node.dicom.validators import is_storable_uid
from node.pull import findsplit, scu
from node.pull.inbox import ACTIVE, DONE, FAILED_DIR, Inbox, status_document
from node.pull.requests import RequestError, date_problem
from node.pull.scheduler import R_FAILED, Scheduler, address_of, recent_requests, request_file, settings_for
from node.pull.scu import ScuError
from node.store import state as study_state
from node.store.store import Store

log = logging.getLogger(__name__)

_QUERY_TEXT = re.compile(r"^[^\\\x00-\x1f]{0,64}$")
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")
_PREVIEW = re.compile(r"^previews/[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.png$")


def preview_path(store: Store, outbox: Path, study_uid: str, name: str) -> Path:
    """A preview PNG of the study's published folder; 404 for any name that is not one of its previews."""
    folder = study_folder(store, outbox, study_uid)
    if folder is None or not _PREVIEW.match(f"previews/{name}"):
        raise ServiceError(404, "no such preview")
    path = folder / "previews" / name
    if path.is_symlink() or not path.is_file():
        raise ServiceError(404, "no such preview")
    return path
SEARCH_FIELDS = ("patient_id", "patient_name", "accession", "study_date", "modality")
_DICOM_KEY = {"patient_id": "PatientID", "patient_name": "PatientName", "accession": "AccessionNumber",
              "study_date": "StudyDate", "modality": "ModalitiesInStudy"}
STUDY_RETURN_KEYS = (*scu.STUDY_KEYS, "PatientName")
MAX_SEARCH_RESULTS = 500


class ServiceError(Exception):
    """A failure to tell the user in plain words, with the HTTP status that fits it."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []


def check_uid(text: str, what: str = "study") -> str:
    """A UID from a URL, checked as the store checks the UIDs it files by (leading zeros of old equipment pass)."""
    if not is_storable_uid(text):
        raise ServiceError(404, f"no {what} {text[:80]!r}: not a DICOM UID")
    return text


def _peer(config: Config, name: str | None) -> str:
    peer = name or config.default_peer.name
    if peer not in config.peers:
        raise ServiceError(404, f"no PACS named {peer[:64]!r} in this node's configuration "
                                f"(configured: {', '.join(config.peers)})")
    return peer


def _pacs_error(peer: str, exc: ScuError | OSError) -> ServiceError:
    reason = exc.reason if isinstance(exc, ScuError) else str(exc)
    if not isinstance(exc, ScuError) or exc.status is None:  # no DICOM answer at all: network or association
        return ServiceError(502, f"The PACS {peer} could not be reached or refused the connection ({reason}). "
                                 "Try again later; if it persists, tell the node's administrator.")
    return ServiceError(502, f"The PACS {peer} refused the search ({reason}).")


def _search_settings(config: Config, peer: str) -> scu.ScuSettings:
    """The peer's settings, every wait capped at web.find_peer_timeout_s: a person is waiting on the page."""
    cap = config.web.find_peer_timeout_s
    s = settings_for(config, config.peers[peer])
    return dataclasses.replace(s, acse_timeout=min(s.acse_timeout, cap), dimse_timeout=min(s.dimse_timeout, cap),
                               network_timeout=min(s.network_timeout, cap), connect_timeout=min(s.connect_timeout, cap))


def search_studies(config: Config, params: dict[str, str], peer_name: str | None = None) -> dict[str, Any]:
    """STUDY-level C-FIND from search fields; at least one field, wildcards allowed in names only."""
    peer = _peer(config, peer_name)
    problems = []
    query: dict[str, str] = {}
    for key, value in params.items():
        if key not in SEARCH_FIELDS:
            problems.append(f"unknown search field {key[:40]!r} (use {', '.join(SEARCH_FIELDS)})")
            continue
        value = value.strip()
        if not value:
            continue
        if not _QUERY_TEXT.match(value):
            problems.append(f"{key}: at most 64 characters, no backslash or control characters")
        elif key == "study_date" and (why := date_problem(value)):
            problems.append(f"study_date: {value!r} is not a date or range like 20250101-20250131 ({why})")
        elif key == "modality" and not _MODALITY.match(value):
            problems.append(f"modality: {value!r} is not a modality code like MR or CT")
        elif key != "patient_name" and ("*" in value or "?" in value):
            problems.append(f"{key}: wildcards (* ?) are only for the patient name")
        else:
            query[_DICOM_KEY[key]] = value
    if problems:
        raise ServiceError(422, "The search was not sent: " + "; ".join(problems), problems)
    if not query:
        raise ServiceError(422, "Fill in at least one field (patient ID, name, accession number, date or modality).")
    p = config.peers[peer]
    address, settings = address_of(p), _search_settings(config, peer)
    try:
        found = findsplit.find_all(lambda q: scu.find_studies(address, settings, q, STUDY_RETURN_KEYS), query,
                                   p.max_find_results, datetime.now(UTC).astimezone().date())
    except (ScuError, OSError) as exc:
        raise _pacs_error(peer, exc) from None
    studies = [_plain_study(m) for m in found.matches if m.get("StudyInstanceUID")][:MAX_SEARCH_RESULTS]
    notes = []
    if len(found.matches) > MAX_SEARCH_RESULTS:
        notes.append(f"Only the first {MAX_SEARCH_RESULTS} of {len(found.matches)} studies are shown: narrow the search.")
    if found.capped_days:
        notes.append(f"The PACS capped its answer for {', '.join(found.capped_days[:5])}: some studies of that day "
                     "may be missing; add a modality to narrow the search.")
    if not studies:
        notes.append("Nothing found on the PACS for this search.")
    return {"peer": peer, "studies": studies, "notes": notes}


def _plain_study(m: dict[str, Any]) -> dict[str, Any]:
    def text(key: str) -> str:
        value = m.get(key)
        if value is None:
            return ""
        if isinstance(value, list | tuple):
            return "\\".join(str(v) for v in value)
        return str(value)

    return {"study_uid": text("StudyInstanceUID"), "patient_id": text("PatientID"), "patient_name": text("PatientName"),
            "accession": text("AccessionNumber"), "study_date": text("StudyDate"), "description": text("StudyDescription"),
            "modalities": text("ModalitiesInStudy"), "series": m.get("NumberOfStudyRelatedSeries"),
            "instances": m.get("NumberOfStudyRelatedInstances")}


def search_series(config: Config, study_uid: str, peer_name: str | None = None) -> dict[str, Any]:
    peer = _peer(config, peer_name)
    check_uid(study_uid)
    p = config.peers[peer]
    try:
        series = scu.find_series(address_of(p), _search_settings(config, peer), study_uid)
    except (ScuError, OSError) as exc:
        raise _pacs_error(peer, exc) from None
    rows = [{"series_uid": str(s.get("SeriesInstanceUID") or ""), "number": s.get("SeriesNumber"),
             "modality": str(s.get("Modality") or ""), "description": str(s.get("SeriesDescription") or ""),
             "instances": s.get("NumberOfSeriesRelatedInstances")} for s in series]
    return {"peer": peer, "study_uid": study_uid, "series": rows}


@dataclass
class Actions:
    """The state-changing actions, bound to the node's running parts."""

    inbox: Inbox
    scheduler: Scheduler
    store: Store

    def create_request(self, body: Any, user: str) -> int:
        """A request from JSON (the request file's schema), filed and run like a dropped file."""
        if not isinstance(body, dict):
            raise ServiceError(422, "The request must be a JSON object with a 'studies' list (see /docs).")
        when = datetime.now(UTC).astimezone()
        stem = f"web-{user}-{when:%Y%m%d-%H%M%S}"
        text = (f"# asked for through the web by {user} at {when.isoformat(timespec='seconds')}\n"
                + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
        try:
            return self.inbox.submit_text(stem, text)
        except RequestError as exc:
            raise ServiceError(422, "The request was not accepted: " + "; ".join(exc.problems[:20]),
                               exc.problems) from None

    def cancel(self, rid: int, user: str) -> dict[str, Any]:
        try:
            self.scheduler.cancel(rid, user)
        except KeyError:
            raise ServiceError(404, f"no request {rid}") from None
        doc = status_document(self.store, rid)
        assert doc is not None
        return doc

    def retry(self, rid: int, user: str) -> int:
        """A failed request runs again as a new request (same content, a line saying whose retry it is)."""
        found = request_file(self.store, rid)
        if found is None:
            raise ServiceError(404, f"no request {rid}")
        name, file_name, location, state = found
        if state != R_FAILED:
            raise ServiceError(409, f"request {name} is {state}: only a failed request can be retried")
        if location not in (FAILED_DIR, ACTIVE, DONE):
            raise ServiceError(409, f"the file of request {name} is not kept any more; ask again")
        path = self.inbox.root / str(location) / str(file_name)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise ServiceError(409, f"the file of request {name} cannot be read any more; ask again") from None
        when = datetime.now(UTC).astimezone()
        header = f"# retry of {name} by {user} at {when.isoformat(timespec='seconds')}\n"
        stem = f"{name}-retry-{when:%H%M%S}"
        if Path(str(file_name)).suffix.lower() == ".csv":
            raise ServiceError(409, f"request {name} came as a CSV file: drop the file into the inbox again")
        try:
            return self.inbox.submit_text(stem, header + text)
        except RequestError as exc:
            raise ServiceError(422, "The retry was not accepted: " + "; ".join(exc.problems[:20]), exc.problems) from None


def list_requests(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    out = []
    for rid in recent_requests(store, limit):
        doc = status_document(store, rid)
        if doc is not None:
            out.append(with_progress(rid, doc))
    return out


def request_detail(store: Store, rid: int) -> dict[str, Any]:
    doc = status_document(store, rid)
    if doc is None:
        raise ServiceError(404, f"no request {rid}")
    return with_progress(rid, doc)


def with_progress(rid: int, doc: dict[str, Any]) -> dict[str, Any]:
    """The status document plus numbers a progress bar needs (0..1 per study and for the request)."""
    fractions = []
    for s in doc["studies"]:
        s["progress"] = study_progress(s)
        fractions.append(s["progress"])
    if doc["state"] in ("done", "failed"):
        total = 1.0
    elif fractions:
        total = sum(fractions) / len(fractions)
    else:
        total = 0.0
    return {"id": rid, **doc, "progress": round(total, 3)}


def study_progress(study: dict[str, Any]) -> float:
    state = str(study["state"])
    if state in ("done", "failed"):
        return 1.0
    if state in ("complete", "processing"):
        return 0.95 if state == "processing" else 0.9
    if state.startswith("moving") and "instances" in study:
        got, _, want = str(study["instances"]).partition("/")
        try:
            return round(0.9 * min(1.0, int(got) / max(1, int(want))), 3)
        except ValueError:
            return 0.0
    return 0.0


def list_studies(store: Store, limit: int = 500) -> list[dict[str, Any]]:
    return [{"study_uid": r.study_uid, "patient_id": r.patient_id, "accession": r.accession, "study_date": r.study_date,
             "instances": r.instances, "state": r.state, "reason": r.reason, "outbox": r.outbox_path,
             "last_received": datetime.fromtimestamp(r.last_received, UTC).isoformat(timespec="seconds")}
            for r in study_state.recent_studies(store, limit)]


def _record(store: Store, study_uid: str) -> study_state.StudyRecord:
    record = study_state.study_record(store, check_uid(study_uid))
    if record is None:
        raise ServiceError(404, f"no study {study_uid} on this node")
    return record


def study_folder(store: Store, outbox: Path, study_uid: str) -> Path | None:
    """The study's published outbox folder (inside outbox/, by the node's own record), or None."""
    return _published(outbox, _record(store, study_uid).outbox_path)


def _published(outbox: Path, name: str | None) -> Path | None:
    if not name:
        return None
    folder = (outbox / str(name)).resolve()
    root = outbox.resolve()
    if folder.parent != root or not folder.is_dir():
        return None
    return folder


def study_detail(store: Store, outbox: Path, study_uid: str) -> dict[str, Any]:
    r = _record(store, study_uid)
    doc: dict[str, Any] = {"study_uid": r.study_uid, "patient_id": r.patient_id, "accession": r.accession,
                           "study_date": r.study_date, "instances": r.instances, "state": r.state, "reason": r.reason,
                           "may_be_incomplete": r.may_be_incomplete, "outbox": r.outbox_path,
                           "series": [{"series_uid": u, "instances": c}
                                      for u, c in study_state.series_counts(store, r.study_uid)],
                           "warnings": [], "files": [], "mr_cleaned": []}
    folder = _published(outbox, r.outbox_path)
    if folder is None:
        return doc
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return doc
    by_uid = {s["series_uid"]: s for s in manifest.get("inputs", {}).get("series", [])}
    quality = {q["series_uid"]: q for q in manifest.get("qc") or []}
    for s in doc["series"]:
        m = by_uid.get(s["series_uid"], {})
        s.update({k: m.get(k) for k in ("volumes", "files", "skipped_reason", "error") if k in m})
        s["warnings"] = m.get("warnings", [])
        q = quality.get(s["series_uid"], {})
        s["previews"] = [p.removeprefix("previews/") for p in m.get("previews", []) if _PREVIEW.match(p)]
        s["low_quality"] = q.get("low_quality")
        s["qc_flags"] = q.get("flags", [])
        for key in ("series_number", "description", "modality"):
            s[key] = q.get(key)
    doc["series"].sort(key=lambda s: (s.get("series_number") is None, s.get("series_number") or 0, s["series_uid"]))
    doc["warnings"] = list(manifest.get("warnings", []))
    doc["files"] = [{"path": f["path"], "bytes": f["bytes"]} for f in manifest.get("outputs", [])]
    doc["mr_cleaned"] = _mr_cleaned(folder / "metadata.xlsx")
    return doc


_MR_COLUMNS = ("SeriesNumber", "SeriesDescription", "sequenceClass", "standardOrientation", "isContrastEnhanced",
               "isFatSuppressed", "refinedImageType")


def _mr_cleaned(workbook: Path) -> list[dict[str, Any]]:
    """The MR_Cleaned sheet's main classes, one row per series (empty when there is no MR sheet)."""
    if not workbook.is_file():
        return []
    from openpyxl import load_workbook

    try:
        wb = load_workbook(workbook, read_only=True, data_only=True)
    except (OSError, ValueError, KeyError):
        return []
    try:
        if "MR_Cleaned" not in wb.sheetnames:
            return []
        rows = wb["MR_Cleaned"].iter_rows(values_only=True)
        header = [str(h) if h is not None else "" for h in next(rows, ())]
        wanted = [c for c in _MR_COLUMNS if c in header]
        out = []
        seen: set[tuple[Any, ...]] = set()
        for row in rows:
            rec = dict(zip(header, row, strict=False))
            key = tuple(rec.get(c) for c in wanted)
            if key in seen:
                continue
            seen.add(key)
            out.append({c: rec.get(c) for c in wanted})
            if len(out) >= 200:
                break
        return out
    finally:
        wb.close()


def node_status(config: Config, store: Store, checks: dict[str, tuple[bool, str]], echo: bool) -> dict[str, Any]:
    """Listener, peers (with C-ECHO when asked), disk, queue and the last errors (as `daemon.py status`)."""
    from node.ops.status import last_errors, peer_echoes
    from node.pull.scheduler import request_counts

    if echo:
        peers: list[dict[str, Any]] = [{"name": p.name, "ae_title": p.ae_title, "host": p.host, "port": p.port,
                                        "reachable": p.ok, "detail": p.detail} for p in peer_echoes(config)]
    else:
        peers = [{"name": n, "ae_title": p.ae_title, "host": p.host, "port": p.port} for n, p in config.peers.items()]
    return {
        "node": {"ae_title": config.node.ae_title, "bind": config.node.bind, "port": config.node.port},
        "healthy": all(ok for ok, _ in checks.values()),
        "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in checks.items()},
        "peers": peers,
        "requests": request_counts(store),
        "studies": study_state.counts(store),
        "last_errors": [{"when": w, "what": t} for w, t in last_errors(store, 10)[:15]],
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def progress_snapshot(store: Store, limit: int = 50) -> str:
    """The request list's live numbers as one JSON text (what the server push sends when it changes)."""
    return json.dumps([{"id": r["id"], "state": r["state"], "progress": r["progress"], "reason": r.get("reason"),
                        "queries": [q["state"] for q in r["queries"]],
                        "studies": [{"study_uid": s["study_uid"], "state": s["state"], "progress": s["progress"],
                                     "instances": s.get("instances"), "accession": s.get("accession"),
                                     "patient_id": s.get("patient_id"), "study_date": s.get("study_date")}
                                    for s in r["studies"]]}
                       for r in list_requests(store, limit)], sort_keys=True)


__all__ = ["Actions", "ServiceError", "list_requests", "list_studies", "node_status",
           "request_detail", "search_series", "search_studies", "study_detail", "study_folder"]
