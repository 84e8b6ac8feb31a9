"""Search fields are checked before anything is sent to the PACS, and refused in words."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.web.service import ServiceError, check_uid, search_studies
from toolkit.nodeproc import make_config


@pytest.mark.parametrize(("params", "words"), [
    ({}, "at least one field"),
    ({"patient_id": "   "}, "at least one field"),
    ({"accession": "A*"}, "wildcards"),
    ({"patient_id": "12\\34"}, "backslash"),
    ({"patient_name": "x" * 65}, "at most 64"),
    ({"study_date": "2025-01-01"}, "not a date"),
    ({"modality": "mr; drop"}, "modality code"),
    ({"sql": "1"}, "unknown search field"),
])
def test_bad_search_input_is_a_422_with_the_reason(tmp_path: Path, params: dict[str, str], words: str) -> None:
    config = make_config(tmp_path)
    with pytest.raises(ServiceError, match=words) as caught:
        search_studies(config, params)
    assert caught.value.status == 422


def test_an_unknown_pacs_is_a_404_naming_the_configured_ones(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="configured: pacs") as caught:
        search_studies(make_config(tmp_path), {"accession": "A"}, "other")
    assert caught.value.status == 404


@pytest.mark.parametrize("text", ["../x", "1.2.3/..", "1..2", "1.2.", "a.b", "1" * 65, ""])
def test_only_dicom_uids_pass_as_study_ids(text: str) -> None:
    with pytest.raises(ServiceError):
        check_uid(text)
    assert check_uid("1.2.840.10008.1.2") == "1.2.840.10008.1.2"
