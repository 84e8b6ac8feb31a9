"""Study queries against a PACS that caps C-FIND results: split the date range until no answer is at the cap.

Many PACS return at most 500 or 1,000 matches. Some say so (Orthanc's LimitFindResults ends the answer with
Cancel: scu marks it truncated), many say nothing: for those the cap is configured (peers.*.max_find_results).
A query whose answer is truncated or has exactly the configured cap is split in two halves of its StudyDate range,
recursively (as ADIT does); a query without a date range is split over all dates. A single day that is still
at the cap cannot be split further: its matches are kept and the day is reported, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

EARLIEST = date(1900, 1, 1)  # where an open-ended range ("-20250101", or no date at all) starts
_FMT = "%Y%m%d"


@dataclass
class FindOutcome:
    matches: list[dict[str, Any]]
    queries: int = 0  # C-FINDs sent
    capped_days: list[str] = field(default_factory=list)  # single days still at the cap (maybe incomplete)


def _day(text: str) -> date:
    return datetime.strptime(text, _FMT).date()  # noqa: DTZ007 - a calendar date, no time zone involved


def date_bounds(value: str | None, today: date) -> tuple[date, date]:
    """(first, last) day of a DICOM date or range; open ends are EARLIEST and today."""
    if not value:
        return EARLIEST, today
    if "-" not in value:
        d = _day(value)
        return d, d
    lo, _, hi = value.partition("-")
    return (_day(lo) if lo else EARLIEST), (_day(hi) if hi else max(today, _day(lo) if lo else today))


def as_range(lo: date, hi: date) -> str:
    return lo.strftime(_FMT) if lo == hi else f"{lo.strftime(_FMT)}-{hi.strftime(_FMT)}"


def find_all(
    find: Callable[[Mapping[str, str]], list[dict[str, Any]]],
    query: Mapping[str, str],
    cap: int | None,
    today: date,
) -> FindOutcome:
    """Every match of a STUDY-level query, splitting by StudyDate while an answer has `cap` matches."""
    outcome = FindOutcome(matches=[])
    seen: set[str] = set()

    def keep(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            uid = str(row.get("StudyInstanceUID") or "")
            if uid and uid not in seen:
                seen.add(uid)
                outcome.matches.append(row)

    def run(q: Mapping[str, str], lo: date, hi: date) -> None:
        rows = find(q)
        outcome.queries += 1
        keep(rows)
        truncated = bool(getattr(rows, "truncated", False))  # the peer said it stopped early (Cancel)
        if not truncated and (cap is None or len(rows) < cap):
            return
        if lo >= hi:
            outcome.capped_days.append(lo.strftime(_FMT))
            return
        mid = lo + timedelta(days=(hi - lo).days // 2)
        for a, b in ((lo, mid), (mid + timedelta(days=1), hi)):
            run({**q, "StudyDate": as_range(a, b)}, a, b)

    if "AccessionNumber" in query:
        # An accession names one study (a few at most): nothing to split.
        keep(find(query))
        outcome.queries = 1
        return outcome
    lo, hi = date_bounds(query.get("StudyDate"), today)
    run(query, lo, hi)
    return outcome
