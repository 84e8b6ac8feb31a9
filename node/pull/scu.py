"""DICOM client side: C-ECHO, C-FIND, C-MOVE and C-GET against a PACS, with failures classified for retries.

Longer than our ~450-line norm on purpose: one module per DICOM role, like pynetdicom's apps; the four
services share association setup, status classification and the retrieve loop.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, Association, build_role, evt
from pynetdicom.presentation import PresentationContext, build_context

log = logging.getLogger(__name__)

# Literal UIDs: pynetdicom.sop_class builds its names at import time, invisible to the type checker.
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


class ErrorKind(StrEnum):
    """Whether retrying later can help (transient) or the request must fail with its reason (permanent)."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


class StatusCategory(StrEnum):
    SUCCESS = "success"
    PENDING = "pending"
    WARNING = "warning"
    CANCEL = "cancel"
    FAILURE = "failure"


@dataclass(frozen=True)
class PeerAddress:
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class ScuSettings:
    """Our side of the association; timeouts in seconds, max_pdu 0 = unlimited.

    retrieve_timeout replaces dimse_timeout while waiting for C-MOVE/C-GET responses: some PACS send no
    pending responses and answer only when the whole study has been sent.
    """

    calling_ae: str = "DICOMNODE"
    acse_timeout: float = 30
    dimse_timeout: float = 120
    network_timeout: float = 60
    max_pdu: int = 0
    connect_timeout: float = 10
    retrieve_timeout: float = 1800


class ScuError(Exception):
    """A failed DICOM operation, classified so the scheduler knows whether to retry."""

    def __init__(self, kind: ErrorKind, reason: str, *, status: int | None = None, result: MoveResult | None = None) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.status = status
        # Sub-operation counts of a C-MOVE/C-GET that failed part way: what did arrive need not be asked again.
        self.result = result


@dataclass(frozen=True)
class StatusInfo:
    status: int
    category: StatusCategory
    kind: ErrorKind | None
    reason: str


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    status: int | None
    seconds: float
    error: str = ""
    kind: ErrorKind | None = None


@dataclass(frozen=True)
class MoveProgress:
    remaining: int
    completed: int
    failed: int
    warning: int


@dataclass(frozen=True)
class MoveResult:
    """Outcome of a C-MOVE or C-GET: final status and sub-operation counts (C-GET also counts what we stored)."""

    status: int
    completed: int
    failed: int
    warning: int
    remaining: int
    failed_sop_uids: tuple[str, ...] = ()
    seconds: float = 0.0
    stored: int = 0

    @property
    def partial(self) -> bool:
        """True when some sub-operations did not complete (failed or never run)."""
        return self.failed > 0 or self.remaining > 0 or self.status == 0xB000 or bool(self.failed_sop_uids)


StoreCallback = Callable[[Dataset], int | None]

# PS3.7 C.1 general statuses a Q/R SCP may answer with, and the service-specific ones of PS3.4 C.4.1-C.4.3.
_PERMANENT_GENERAL: dict[int, str] = {
    0x0122: "SOP class not supported",
    0x0124: "refused: not authorized",
    0x0211: "unrecognised operation",
    0x0119: "class-instance conflict",
    0x0210: "duplicate invocation",
    0x0117: "invalid SOP instance",
    0x0118: "no such SOP class",
}
_SERVICE_FAILURES: dict[int, tuple[ErrorKind, str]] = {
    0xA700: (ErrorKind.TRANSIENT, "refused: out of resources"),
    0xA701: (ErrorKind.TRANSIENT, "refused: out of resources, unable to calculate number of matches"),
    0xA702: (ErrorKind.TRANSIENT, "refused: out of resources, unable to perform sub-operations"),
    0xA801: (ErrorKind.PERMANENT, "refused: move destination unknown"),
    0xA900: (ErrorKind.PERMANENT, "identifier does not match SOP class"),
    0x0110: (ErrorKind.TRANSIENT, "processing failure"),
}


def classify_status(status: int) -> StatusInfo:
    """Classify a C-ECHO/C-FIND/C-MOVE/C-GET response status (PS3.4 C.4, PS3.7 C)."""
    if status == 0x0000:
        return StatusInfo(status, StatusCategory.SUCCESS, None, "success")
    if status in (0xFF00, 0xFF01):
        return StatusInfo(status, StatusCategory.PENDING, None, "pending")
    if status == 0xFE00:
        return StatusInfo(status, StatusCategory.CANCEL, ErrorKind.TRANSIENT, "cancelled")
    if status == 0xB000:
        return StatusInfo(status, StatusCategory.WARNING, None, "warning: one or more sub-operations failed")
    if (status >> 12) == 0xB or status in (0x0001, 0x0107, 0x0116):
        return StatusInfo(status, StatusCategory.WARNING, None, "warning")
    if status in _SERVICE_FAILURES:
        kind, reason = _SERVICE_FAILURES[status]
        return StatusInfo(status, StatusCategory.FAILURE, kind, reason)
    if status in _PERMANENT_GENERAL:
        return StatusInfo(status, StatusCategory.FAILURE, ErrorKind.PERMANENT, _PERMANENT_GENERAL[status])
    if (status >> 8) == 0xA7:
        return StatusInfo(status, StatusCategory.FAILURE, ErrorKind.TRANSIENT, "refused: out of resources")
    if (status >> 8) == 0xA9:
        return StatusInfo(status, StatusCategory.FAILURE, ErrorKind.PERMANENT, "identifier does not match SOP class")
    if (status >> 12) == 0xC:
        # Unable to process is the PACS's catch-all: often a passing condition (busy, locked), so retry with backoff.
        return StatusInfo(
            status, StatusCategory.FAILURE, ErrorKind.TRANSIENT, "unable to process (peer-specific failure; retried)"
        )
    # Unknown codes: retries are bounded by the scheduler's backoff, a wrong permanent verdict loses the request.
    return StatusInfo(status, StatusCategory.FAILURE, ErrorKind.TRANSIENT, "unrecognised failure status")


# PS3.8 Table 9-21: A-ASSOCIATE-RJ result / source / diagnostic.
_REJECT_DIAGNOSTICS: dict[tuple[int, int], str] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def classify_rejection(result: int, source: int, diagnostic: int) -> tuple[ErrorKind, str]:
    """Classify an A-ASSOCIATE-RJ: rejected-permanent means do not retry, rejected-transient means try later."""
    what = _REJECT_DIAGNOSTICS.get((source, diagnostic), f"source {source} diagnostic {diagnostic}")
    if result == 0x01:
        return ErrorKind.PERMANENT, f"association rejected (permanent): {what}"
    return ErrorKind.TRANSIENT, f"association rejected (transient): {what}"


def _status_of(rsp: Dataset) -> int | None:
    value = rsp.get("Status")
    return None if value is None else int(value)


def _set_nodelay(event: evt.Event, state: dict[str, bool]) -> None:
    # pynetdicom 3.0.4 has no socket-option setting for requestors; EVT_CONN_OPEN fires right after connect()
    # and before the A-ASSOCIATE-RQ is written, so Nagle is off for every PDU we send.
    state["connected"] = True
    dul_socket = event.assoc.dul.socket
    sock = dul_socket.socket if dul_socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextmanager
def _associate(
    peer: PeerAddress,
    settings: ScuSettings,
    contexts: Sequence[PresentationContext],
    operation: str,
    ext_neg: Sequence[Any] | None = None,
    handlers: Sequence[tuple[Any, ...]] = (),
) -> Iterator[Association]:
    """An established association (TCP_NODELAY on), released on exit; ScuError if it cannot be made."""
    ae = AE(ae_title=settings.calling_ae)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.connection_timeout = settings.connect_timeout
    state = {"connected": False}
    evt_handlers: list[tuple[Any, ...]] = [(evt.EVT_CONN_OPEN, _set_nodelay, [state]), *handlers]
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    assoc = ae.associate(
        peer.host,
        peer.port,
        contexts=list(contexts),
        ae_title=peer.ae_title,
        max_pdu=settings.max_pdu,
        ext_neg=list(ext_neg) if ext_neg else None,
        evt_handlers=evt_handlers,
    )
    if not assoc.is_established:
        kind, reason = _failed_association(assoc, state["connected"])
        log.warning("%s to %s as %s: %s", operation, where, settings.calling_ae, reason)
        raise ScuError(kind, f"{reason} ({where})")
    try:
        yield assoc
    except BaseException:
        # Responses may still be outstanding: a release would wait on them, an abort ends the association now.
        if assoc.is_established:
            assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()
    finally:
        ae.shutdown()


def _failed_association(assoc: Association, connected: bool) -> tuple[ErrorKind, str]:
    if not connected:
        return ErrorKind.TRANSIENT, "cannot connect (refused, unreachable or connect timeout)"
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        if rsp is not None and rsp.result is not None:
            return classify_rejection(int(rsp.result), int(rsp.result_source or 0), int(rsp.diagnostic or 0))
        return ErrorKind.TRANSIENT, "association rejected"
    if assoc.is_aborted and not assoc.accepted_contexts and assoc.rejected_contexts:
        return ErrorKind.PERMANENT, "peer accepted none of the proposed presentation contexts"
    if assoc.is_aborted:
        return ErrorKind.TRANSIENT, "association aborted during negotiation"
    return ErrorKind.TRANSIENT, "no answer to the association request (ACSE timeout)"


def _check_final(status: int | None, operation: str, assoc: Association) -> StatusInfo:
    if status is None:
        why = "association aborted" if assoc.is_aborted else "no response (DIMSE timeout)"
        raise ScuError(ErrorKind.TRANSIENT, f"{operation}: {why}")
    return classify_status(status)


def _failure_text(operation: str, info: StatusInfo, rsp: Dataset) -> str:
    text = f"{operation} failed: 0x{info.status:04X} {info.reason}"
    comment = rsp.get("ErrorComment")
    return f"{text} ({comment})" if comment else text


def echo(peer: PeerAddress, settings: ScuSettings) -> EchoResult:
    """C-ECHO; never raises for DICOM/network failures, the result says what went wrong."""
    start = time.monotonic()
    try:
        with _associate(peer, settings, [build_context(VERIFICATION)], "C-ECHO") as assoc:
            rsp = assoc.send_c_echo()
            status = _status_of(rsp)
    except ScuError as exc:
        return EchoResult(False, None, time.monotonic() - start, exc.reason, exc.kind)
    seconds = time.monotonic() - start
    if status is None:
        return EchoResult(False, None, seconds, "no response to C-ECHO", ErrorKind.TRANSIENT)
    info = classify_status(status)
    if info.category is not StatusCategory.SUCCESS:
        return EchoResult(False, status, seconds, info.reason, info.kind)
    return EchoResult(True, status, seconds)


# Return keys asked for when the caller does not name them.
STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
    "ImageType",
    "BodyPartExamined",
)


def build_identifier(level: str, query: Mapping[str, str], return_keys: Sequence[str]) -> Dataset:
    """A Study Root query identifier; unknown keywords raise ValueError naming the keyword."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in [*return_keys, *query]:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"not a DICOM keyword: {keyword!r}")
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword, value in query.items():
        if not isinstance(value, str):
            raise ValueError(f"query value of {keyword} must be a string, got {value!r}")
        setattr(ds, keyword, value)
    if not all(v.isascii() for v in query.values()):
        # Without it the peer would read our UTF-8 bytes as its default repertoire (ASCII) and match nothing.
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _plain(keyword: str, ds: Dataset) -> Any:
    """A response value as plain Python: int for counts, list for multi-valued keywords, str otherwise."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    value = ds.get(keyword)
    multi = dictionary_VM(tag) != "1"
    if value is None or value == "":
        return [] if multi else None
    if multi:
        items = value if isinstance(value, (MultiValue, list, tuple)) else [value]
        return [str(v) for v in items]
    if dictionary_VR(tag) in ("IS", "US", "UL", "SL", "SS"):
        return int(value)
    return str(value)


class Matches(list[dict[str, Any]]):
    """C-FIND matches; `truncated` when the peer ended the answer early on its own (a cap on results)."""

    truncated: bool = False


# A peer that caps its answers may end one with Cancel (0xFE00) after the cap although we never asked to cancel
# (Orthanc does, with LimitFindResults). The matches so far are real: the caller decides what a partial means.
_CANCEL = 0xFE00


def _find(peer: PeerAddress, settings: ScuSettings, identifier: Dataset, keys: Sequence[str],
          partial_ok: bool = False) -> Matches:
    model = STUDY_ROOT_FIND
    level = str(identifier.QueryRetrieveLevel)
    out = Matches()
    with _associate(peer, settings, [build_context(model)], f"C-FIND {level}") as assoc:
        final: int | None = None
        last = Dataset()
        for rsp, match in assoc.send_c_find(identifier, model):
            last = rsp
            final = _status_of(rsp)
            if final in (0xFF00, 0xFF01) and match is not None:
                out.append({k: _plain(k, match) for k in keys})
        info = _check_final(final, f"C-FIND {level}", assoc)
    if final == _CANCEL and out:
        if partial_ok:
            out.truncated = True
            log.info("C-FIND %s on %s: the peer ended its answer after %d match(es) (a cap on results)", level,
                     peer.ae_title, len(out))
            return out
        raise ScuError(ErrorKind.TRANSIENT, f"C-FIND {level} failed: the peer ended its answer after {len(out)} "
                       "match(es) with Cancel: it caps C-FIND results (e.g. Orthanc's LimitFindResults)",
                       status=_CANCEL)
    if info.category is not StatusCategory.SUCCESS:
        assert info.kind is not None
        raise ScuError(info.kind, _failure_text(f"C-FIND {level}", info, last), status=info.status)
    log.info("C-FIND %s on %s: %d match(es)", level, peer.ae_title, len(out))
    return out


def find_studies(
    peer: PeerAddress, settings: ScuSettings, query: Mapping[str, str], return_keys: Sequence[str] = STUDY_KEYS
) -> Matches:
    """STUDY-level C-FIND. query: keyword -> matching value (dates as ranges "20250101-20250131", wildcards).

    An answer the peer cut short at its cap comes back with `truncated` set (node.pull.findsplit splits it)."""
    keys = list(dict.fromkeys([*return_keys, *query]))
    return _find(peer, settings, build_identifier("STUDY", query, keys), keys, partial_ok=True)


def find_series(
    peer: PeerAddress, settings: ScuSettings, study_uid: str, return_keys: Sequence[str] = SERIES_KEYS
) -> list[dict[str, Any]]:
    """SERIES-level C-FIND of one study."""
    keys = list(dict.fromkeys(["SeriesInstanceUID", *return_keys]))
    return _find(peer, settings, build_identifier("SERIES", {"StudyInstanceUID": study_uid}, keys), keys)


def find_instances(peer: PeerAddress, settings: ScuSettings, study_uid: str, series_uid: str) -> list[str]:
    """IMAGE-level C-FIND: the SOP Instance UIDs of one series."""
    query = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
    rows = _find(peer, settings, build_identifier("IMAGE", query, ["SOPInstanceUID"]), ["SOPInstanceUID"])
    return [str(r["SOPInstanceUID"]) for r in rows if r["SOPInstanceUID"]]


def count_instances(peer: PeerAddress, settings: ScuSettings, study_uid: str, series_uid: str) -> int:
    """Instance count of a series by IMAGE-level C-FIND, for PACS that omit NumberOfSeriesRelatedInstances."""
    return len(find_instances(peer, settings, study_uid, series_uid))


def _retrieve_identifier(study_uid: str, series_uid: str | None, sop_uids: Sequence[str] | None) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    if sop_uids:
        if series_uid is None:
            raise ValueError("sop_instance_uids needs series_uid")
        ds.QueryRetrieveLevel = "IMAGE"
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = list(sop_uids)
    elif series_uid is not None:
        ds.QueryRetrieveLevel = "SERIES"
        ds.SeriesInstanceUID = series_uid
    else:
        ds.QueryRetrieveLevel = "STUDY"
    return ds


@dataclass
class _Tally:
    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    stored: int = 0

    def update(self, rsp: Dataset) -> None:
        for name, keyword in (
            ("remaining", "NumberOfRemainingSuboperations"),
            ("completed", "NumberOfCompletedSuboperations"),
            ("failed", "NumberOfFailedSuboperations"),
            ("warning", "NumberOfWarningSuboperations"),
        ):
            value = rsp.get(keyword)
            if value is not None:
                setattr(self, name, int(value))


def _run_retrieve(
    assoc: Association,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    operation: str,
    on_progress: Callable[[MoveProgress], None] | None,
    tally: _Tally,
    start: float,
) -> MoveResult:
    final: int | None = None
    last = Dataset()
    failed_uids: tuple[str, ...] = ()
    for rsp, identifier in responses:
        last = rsp
        final = _status_of(rsp)
        if final is None:
            break
        if final in (0xFF00, 0xFF01):
            tally.update(rsp)
            if on_progress is not None:
                on_progress(MoveProgress(tally.remaining, tally.completed, tally.failed, tally.warning))
            continue
        # The final response carries the totals; remaining is absent there by definition (PS3.4 C.4.2.1.6).
        pending_remaining = tally.remaining
        tally.remaining = 0
        tally.update(rsp)
        if final != 0x0000 and "NumberOfRemainingSuboperations" not in rsp:
            tally.remaining = pending_remaining
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            raw = identifier.FailedSOPInstanceUIDList
            failed_uids = tuple(str(u) for u in (raw if isinstance(raw, (MultiValue, list)) else [raw]) if u)
    info = _check_final(final, operation, assoc)
    result = MoveResult(
        status=info.status,
        completed=tally.completed,
        failed=tally.failed,
        warning=tally.warning,
        remaining=tally.remaining,
        failed_sop_uids=failed_uids,
        seconds=time.monotonic() - start,
        stored=tally.stored,
    )
    if info.category in (StatusCategory.FAILURE, StatusCategory.CANCEL):
        assert info.kind is not None
        text = _failure_text(operation, info, last)
        if (info.status >> 12) == 0xC and result.completed + result.failed + result.warning == 0:
            # Orthanc answers 0xC000, not 0xA801, for a destination it does not know; say where to look.
            text += "; no sub-operation started: check that the peer knows the destination AE title"
        raise ScuError(info.kind, text, status=info.status, result=result)
    return result


def move(
    peer: PeerAddress,
    settings: ScuSettings,
    destination_ae: str,
    study_uid: str,
    series_uid: str | None = None,
    on_progress: Callable[[MoveProgress], None] | None = None,
    sop_instance_uids: Sequence[str] | None = None,
) -> MoveResult:
    """C-MOVE a study, a series, or listed instances of a series to destination_ae (Study Root).

    Returns on success and on warning (see MoveResult.partial); raises ScuError on failure, with the counts
    reached so far in ScuError.result.
    """
    model = STUDY_ROOT_MOVE
    identifier = _retrieve_identifier(study_uid, series_uid, sop_instance_uids)
    operation = f"C-MOVE {identifier.QueryRetrieveLevel} to {destination_ae}"
    start = time.monotonic()
    tally = _Tally()
    with _associate(peer, settings, [build_context(model)], operation) as assoc:
        assoc.dimse_timeout = settings.retrieve_timeout
        responses = assoc.send_c_move(identifier, destination_ae, model)
        result = _run_retrieve(assoc, responses, operation, on_progress, tally, start)
    log.info(
        "%s of study %s from %s: status 0x%04X, %d completed, %d failed, %d warning in %.1f s",
        operation, study_uid, peer.ae_title, result.status, result.completed, result.failed, result.warning,
        result.seconds,
    )  # fmt: skip
    return result


# Storage classes offered for C-GET when the caller names none: the common image and document classes.
DEFAULT_GET_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.1",  # CR Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray (presentation)
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray (processing)
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography (presentation)
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography (processing)
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
)
_GET_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.5",  # RLE
)


def get(
    peer: PeerAddress,
    settings: ScuSettings,
    study_uid: str,
    on_store: StoreCallback,
    series_uid: str | None = None,
    on_progress: Callable[[MoveProgress], None] | None = None,
    sop_classes: Sequence[str] = DEFAULT_GET_STORAGE,
    sop_instance_uids: Sequence[str] | None = None,
) -> MoveResult:
    """C-GET over the same association; on_store(dataset with file_meta) persists each instance.

    on_store returns a C-STORE status (None = 0x0000); an exception in it answers 0xA700 so the peer
    counts that sub-operation as failed instead of us acknowledging something not stored.
    """
    model = STUDY_ROOT_GET
    # PS3.8 allows at most 128 presentation contexts, one is the C-GET model itself.
    if len(sop_classes) > 127:
        raise ValueError(f"at most 127 storage SOP classes for C-GET, got {len(sop_classes)}")
    contexts = [build_context(model), *(build_context(uid, list(_GET_TRANSFER_SYNTAXES)) for uid in sop_classes)]
    roles = [build_role(uid, scp_role=True) for uid in sop_classes]
    identifier = _retrieve_identifier(study_uid, series_uid, sop_instance_uids)
    operation = f"C-GET {identifier.QueryRetrieveLevel}"
    tally = _Tally()

    def handle_store(event: evt.Event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            status = on_store(ds)
        except Exception:
            log.exception("C-GET store callback failed for an instance of study %s", study_uid)
            return 0xA700
        if status is None or status == 0x0000:
            tally.stored += 1
            return 0x0000
        return int(status)

    start = time.monotonic()
    handlers = [(evt.EVT_C_STORE, handle_store)]
    with _associate(peer, settings, contexts, operation, ext_neg=roles, handlers=handlers) as assoc:
        assoc.dimse_timeout = settings.retrieve_timeout
        responses = assoc.send_c_get(identifier, model)
        result = _run_retrieve(assoc, responses, operation, on_progress, tally, start)
    log.info(
        "%s of study %s from %s: status 0x%04X, %d completed, %d stored, %d failed in %.1f s",
        operation, study_uid, peer.ae_title, result.status, result.completed, result.stored, result.failed,
        result.seconds,
    )  # fmt: skip
    return result


__all__ = [
    "DEFAULT_GET_STORAGE",
    "SERIES_KEYS",
    "STUDY_KEYS",
    "STUDY_ROOT_FIND",
    "STUDY_ROOT_GET",
    "STUDY_ROOT_MOVE",
    "VERIFICATION",
    "EchoResult",
    "ErrorKind",
    "MoveProgress",
    "MoveResult",
    "PeerAddress",
    "ScuError",
    "ScuSettings",
    "StatusCategory",
    "StatusInfo",
    "build_identifier",
    "classify_rejection",
    "classify_status",
    "count_instances",
    "echo",
    "find_instances",
    "find_series",
    "find_studies",
    "get",
    "move",
]
