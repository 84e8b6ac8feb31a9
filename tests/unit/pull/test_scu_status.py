"""Classification of DIMSE statuses and association rejections for the retry scheduler."""

from __future__ import annotations

import pytest

from node.pull.scu import ErrorKind, MoveResult, StatusCategory, build_identifier, classify_rejection, classify_status


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (0x0000, StatusCategory.SUCCESS),
        (0xFF00, StatusCategory.PENDING),
        (0xFF01, StatusCategory.PENDING),
        (0xB000, StatusCategory.WARNING),
        (0xB007, StatusCategory.WARNING),
        (0x0107, StatusCategory.WARNING),
        (0xFE00, StatusCategory.CANCEL),
        (0xA801, StatusCategory.FAILURE),
    ],
)
def test_each_status_falls_in_its_ps3_4_category(status: int, category: StatusCategory) -> None:
    assert classify_status(status).category is category


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (0xA801, ErrorKind.PERMANENT, "move destination unknown"),
        (0xA900, ErrorKind.PERMANENT, "identifier does not match"),
        (0xA9FF, ErrorKind.PERMANENT, "identifier does not match"),
        (0xA700, ErrorKind.TRANSIENT, "out of resources"),
        (0xA701, ErrorKind.TRANSIENT, "unable to calculate"),
        (0xA702, ErrorKind.TRANSIENT, "unable to perform sub-operations"),
        (0xA7FE, ErrorKind.TRANSIENT, "out of resources"),
        (0xC000, ErrorKind.TRANSIENT, "unable to process"),
        (0xCFFF, ErrorKind.TRANSIENT, "unable to process"),
        (0x0122, ErrorKind.PERMANENT, "SOP class not supported"),
        (0x0124, ErrorKind.PERMANENT, "not authorized"),
        (0x0110, ErrorKind.TRANSIENT, "processing failure"),
        (0xFE00, ErrorKind.TRANSIENT, "cancelled"),
        (0xD123, ErrorKind.TRANSIENT, "unrecognised"),
    ],
)
def test_failure_statuses_are_classified_transient_or_permanent(status: int, kind: ErrorKind, words: str) -> None:
    info = classify_status(status)
    assert info.kind is kind
    assert words in info.reason


def test_success_pending_and_warning_carry_no_error_kind() -> None:
    assert [classify_status(s).kind for s in (0x0000, 0xFF00, 0xB000)] == [None, None, None]


@pytest.mark.parametrize(
    ("result", "source", "diagnostic", "kind", "words"),
    [
        (1, 1, 3, ErrorKind.PERMANENT, "calling AE title not recognised"),
        (1, 1, 7, ErrorKind.PERMANENT, "called AE title not recognised"),
        (1, 1, 1, ErrorKind.PERMANENT, "no reason given"),
        (1, 2, 2, ErrorKind.PERMANENT, "protocol version"),
        (2, 3, 1, ErrorKind.TRANSIENT, "temporary congestion"),
        (2, 3, 2, ErrorKind.TRANSIENT, "local limit exceeded"),
        (2, 1, 1, ErrorKind.TRANSIENT, "rejected (transient)"),
    ],
)
def test_association_rejections_are_permanent_unless_the_peer_says_transient(
    result: int, source: int, diagnostic: int, kind: ErrorKind, words: str
) -> None:
    got_kind, reason = classify_rejection(result, source, diagnostic)
    assert got_kind is kind
    assert words in reason


def test_a_move_is_partial_when_sub_operations_failed_or_did_not_run() -> None:
    assert not MoveResult(0x0000, 10, 0, 0, 0).partial
    assert not MoveResult(0x0000, 9, 0, 1, 0).partial  # a warning sub-operation still stored the instance
    assert MoveResult(0xB000, 9, 1, 0, 0).partial
    assert MoveResult(0xA702, 4, 0, 0, 6).partial
    assert MoveResult(0xB000, 9, 0, 0, 0, failed_sop_uids=("1.2.3",)).partial


def test_a_query_identifier_names_an_unknown_keyword_in_its_error() -> None:
    with pytest.raises(ValueError, match="NotAKeyword"):
        build_identifier("STUDY", {"NotAKeyword": "x"}, ["StudyInstanceUID"])


def test_a_query_identifier_holds_the_level_the_matching_values_and_empty_return_keys() -> None:
    ds = build_identifier("STUDY", {"AccessionNumber": "A1", "StudyDate": "20250101-20250131"}, ["PatientID"])
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.AccessionNumber == "A1"
    assert ds.StudyDate == "20250101-20250131"
    assert ds.PatientID == ""


def test_a_non_ascii_query_value_declares_utf8() -> None:
    assert "SpecificCharacterSet" not in build_identifier("STUDY", {"PatientID": "P1"}, [])
    ds = build_identifier("STUDY", {"StudyDescription": "Knie rechts ä*"}, [])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
