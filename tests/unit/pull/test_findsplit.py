"""A PACS that caps C-FIND results: the query is split by date until every match is seen, or the day is named."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

import pytest

from node.pull.findsplit import date_bounds, find_all
from node.pull.scu import Matches

TODAY = date(2026, 12, 3)


class CappedPacs:
    """A STUDY-level C-FIND that answers at most `cap` matches, in date order, and says nothing about the rest."""

    def __init__(self, studies: list[tuple[str, str]], cap: int) -> None:
        self.studies, self.cap, self.calls = studies, cap, 0

    def find(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        self.calls += 1
        lo, hi = date_bounds(query.get("StudyDate"), TODAY) if query.get("StudyDate") else (None, None)
        rows = [{"StudyInstanceUID": uid, "StudyDate": d} for uid, d in sorted(self.studies, key=lambda s: s[1])
                if lo is None or (lo.strftime("%Y%m%d") <= d <= hi.strftime("%Y%m%d"))]  # type: ignore[union-attr]
        return rows[: self.cap]


def spread(n: int, start: date, every_days: int) -> list[tuple[str, str]]:
    return [(f"1.2.3.{i}", (start + timedelta(days=i * every_days)).strftime("%Y%m%d")) for i in range(n)]


def test_a_date_range_answered_at_the_cap_is_split_until_every_study_is_found() -> None:
    pacs = CappedPacs(spread(37, date(2025, 1, 1), 3), cap=5)
    out = find_all(pacs.find, {"PatientID": "P1", "StudyDate": "20250101-20251231"}, 5, TODAY)
    assert sorted(m["StudyInstanceUID"] for m in out.matches) == sorted(uid for uid, _ in pacs.studies)
    assert out.capped_days == []
    assert out.queries == pacs.calls < 60


def test_without_a_cap_one_query_is_sent_and_its_answer_kept_as_is() -> None:
    pacs = CappedPacs(spread(37, date(2025, 1, 1), 3), cap=1000)
    out = find_all(pacs.find, {"PatientID": "P1", "StudyDate": "20250101-20251231"}, None, TODAY)
    assert (len(out.matches), out.queries) == (37, 1)


def test_a_query_without_dates_at_the_cap_is_split_over_all_dates() -> None:
    pacs = CappedPacs(spread(12, date(1998, 5, 1), 400), cap=4)
    out = find_all(pacs.find, {"PatientID": "P1"}, 4, TODAY)
    assert len(out.matches) == 12
    assert out.capped_days == []


def test_a_single_day_still_at_the_cap_is_reported_and_its_matches_kept() -> None:
    same_day = [(f"1.2.9.{i}", "20250301") for i in range(7)]
    pacs = CappedPacs(same_day + spread(3, date(2025, 6, 1), 1), cap=5)
    out = find_all(pacs.find, {"PatientID": "P1", "StudyDate": "20250101-20251231"}, 5, TODAY)
    assert out.capped_days == ["20250301"]
    assert len([m for m in out.matches if m["StudyDate"] == "20250301"]) == 5
    assert len([m for m in out.matches if m["StudyDate"] != "20250301"]) == 3


def test_an_accession_query_is_never_split() -> None:
    pacs = CappedPacs(spread(3, date(2025, 1, 1), 1), cap=2)
    out = find_all(pacs.find, {"AccessionNumber": "A1"}, 2, TODAY)
    assert (out.queries, out.capped_days) == (1, [])


@pytest.mark.parametrize(("value", "bounds"), [
    ("20250102", (date(2025, 1, 2), date(2025, 1, 2))),
    ("20250102-20250110", (date(2025, 1, 2), date(2025, 1, 10))),
    ("20250102-", (date(2025, 1, 2), TODAY)),
    ("-20250110", (date(1900, 1, 1), date(2025, 1, 10))),
    (None, (date(1900, 1, 1), TODAY)),
])
def test_date_bounds_read_every_dicom_date_form(value: str | None, bounds: tuple[date, date]) -> None:
    assert date_bounds(value, TODAY) == bounds


class TellingPacs(CappedPacs):
    """A PACS that ends a capped answer with Cancel (Orthanc): scu marks the matches truncated."""

    def find(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        rows = super().find(query)
        out = Matches(rows)
        out.truncated = len(rows) == self.cap and len(rows) < len(self.studies)
        return out


def test_a_peer_that_says_it_cut_its_answer_short_is_split_without_a_configured_cap() -> None:
    pacs = TellingPacs(spread(20, date(2025, 1, 1), 5), cap=6)
    out = find_all(pacs.find, {"PatientID": "P1", "StudyDate": "20250101-20251231"}, None, TODAY)
    assert len(out.matches) == 20
    assert out.queries > 1
