"""Request file parsing: the format of the design brief, and every error with its location."""

from __future__ import annotations

import pytest

from node.pull import requests
from node.pull.requests import RequestError, SeriesFilter, StudyQuery

PEERS = ["pacs", "backup"]


def parse(text: str, filename: str = "r.yaml", max_bytes: int = 1_048_576) -> requests.Request:
    return requests.parse(filename, text.encode(), PEERS, max_bytes)


def problems(text: str | bytes, filename: str = "r.yaml", max_bytes: int = 1_048_576) -> list[str]:
    raw = text.encode() if isinstance(text, str) else text
    with pytest.raises(RequestError) as info:
        requests.parse(filename, raw, PEERS, max_bytes)
    return info.value.problems


def test_the_example_of_the_design_brief_parses_with_every_field() -> None:
    r = parse(
        "peer: backup\nstudies:\n  - accession: M25053000056\n  - patient_id: \"0012345\"\n"
        "    study_date: 20250101-20250131\n    modality: MR\nseries_filter:\n  modality: [MR, CT]\n"
        "  exclude_derived: true\n  min_instances: 10\n  include: [t1]\n  exclude: ['^loc']\n"
        "outputs: [excel, nifti]\nnot_before: 2026-11-26T20:00\npriority: 5\n",
        filename="knee-cohort.yaml",
    )
    assert r.name == "knee-cohort"
    assert r.peer == "backup"
    assert r.studies == (StudyQuery(accession="M25053000056"),
                         StudyQuery(patient_id="0012345", study_date="20250101-20250131", modality="MR"))
    assert r.series_filter == SeriesFilter(("MR", "CT"), True, 10, ("t1",), ("^loc",))
    assert r.outputs == ("excel", "nifti")
    assert r.priority == 5
    assert r.not_before is not None and r.not_before.tzinfo is not None
    assert r.not_before.strftime("%Y-%m-%d %H:%M") == "2026-11-26 20:00"
    assert len(r.sha256) == 64


def test_defaults_are_the_first_peer_both_outputs_no_filter_and_priority_zero() -> None:
    r = parse("studies:\n  - accession: A1\n")
    assert (r.peer, r.outputs, r.series_filter, r.priority, r.not_before) == ("pacs", ("excel", "nifti"),
                                                                           SeriesFilter(), 0, None)


def test_queries_become_dicom_keywords() -> None:
    assert StudyQuery(accession="A1").dicom_query() == {"AccessionNumber": "A1"}
    assert StudyQuery(patient_id="P", study_date="20250101-", modality="CT").dicom_query() == {
        "PatientID": "P", "StudyDate": "20250101-", "ModalitiesInStudy": "CT"}


def test_a_yaml_syntax_error_names_line_and_column() -> None:
    (p,) = problems("studies:\n  - accession: [A1\n")
    assert p.startswith("At line 3, column 1: YAML syntax error")


def test_an_unknown_key_is_named_with_its_location_and_the_allowed_keys() -> None:
    (p,) = problems("studies:\n  - accession: A1\n    acession: A2\n")
    assert p.startswith("At 'studies[0]': Additional properties are not allowed ('acession' was unexpected)")
    assert "allowed keys: accession, modality, patient_id, study_date" in p


def test_wrong_types_are_all_reported_at_once_each_with_its_location() -> None:
    ps = problems("studies:\n  - accession: A1\npriority: high\noutputs: [excel, pdf]\n"
                  "series_filter:\n  min_instances: many\n  exclude_derived: perhaps\n")
    assert any(p.startswith("At 'priority': 'high' is not of type 'integer'") for p in ps)
    assert any(p.startswith("At 'outputs[1]': 'pdf' is not one of") for p in ps)
    assert any(p.startswith("At 'series_filter.min_instances'") for p in ps)
    assert any(p.startswith("At 'series_filter.exclude_derived'") for p in ps)
    assert len(ps) == 4


def test_an_unquoted_numeric_patient_id_is_refused_with_a_hint_to_quote_it() -> None:
    (p,) = problems("studies:\n  - patient_id: 0012345\n")
    assert p.startswith("At 'studies[0].patient_id'")
    assert "quote it" in p


def test_an_empty_study_list_is_refused() -> None:
    (p,) = problems("studies: []\n")
    assert p.startswith("At 'studies': [] should be non-empty")


def test_a_study_needs_exactly_one_of_accession_or_patient_id() -> None:
    assert problems("studies:\n  - modality: MR\n") == [
        "At 'studies[0]': each study needs exactly one of 'accession', 'patient_id' or 'study_uid'"]
    assert problems("studies:\n  - {accession: A, patient_id: P}\n") == [
        "At 'studies[0]': each study needs exactly one of 'accession', 'patient_id' or 'study_uid'"]


def test_an_unknown_peer_is_refused_naming_the_configured_ones() -> None:
    (p,) = problems("peer: pacs2\nstudies:\n  - accession: A1\n")
    assert p == "At 'peer': unknown peer 'pacs2'; configured peers: pacs, backup"


def test_binary_garbage_is_refused_as_binary() -> None:
    (p,) = problems(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert p.startswith("At byte 8: NUL byte: this is a binary file")
    (p,) = problems(b"studies: \xff\xfe")
    assert p.startswith("At byte 9: not UTF-8 text")


def test_a_file_over_the_size_limit_is_refused_on_its_size() -> None:
    (p,) = problems("studies:\n" + "  - accession: A1\n" * 100, max_bytes=1024)
    assert p == "At '<file>': 1809 bytes is larger than the limit of 1024 bytes (requests.max_file_bytes)"


def test_an_empty_file_and_a_list_at_the_top_are_refused() -> None:
    assert problems("\n\n") == ["At '<file>': the file is empty"]
    assert problems("- accession: A1\n") == ["At '<top level>': expected a mapping with a 'studies' list, got list"]


def test_yaml_aliases_are_refused_before_they_can_expand() -> None:
    (p,) = problems("a: &a [x, x]\nb: &b [*a, *a]\nstudies:\n  - accession: A1\n")
    assert p == "At line 2, column 8: YAML aliases (*name) are not allowed in request files"


def test_bad_dates_regexes_and_times_are_reported_with_their_location() -> None:
    ps = problems("studies:\n  - patient_id: P\n    study_date: 20250231\n  - patient_id: Q\n    study_date: 20250301-20250101\n"
                  "series_filter:\n  include: ['(']\nnot_before: tomorrow\n")
    assert ps[0] == "At 'studies[0].study_date': '20250231' is not a calendar date"
    assert ps[1] == "At 'studies[1].study_date': the range '20250301-20250101' ends before it starts"
    assert ps[2].startswith("At 'series_filter.include[0]': not a regular expression")
    assert ps[3].startswith("At 'not_before': 'tomorrow' is not an ISO date-time")


def test_date_ranges_may_be_open_on_either_side() -> None:
    r = parse("studies:\n  - {patient_id: P, study_date: 20250101-}\n  - {patient_id: P, study_date: -20250101}\n"
              "  - {patient_id: P, study_date: 20250101}\n")
    assert [s.study_date for s in r.studies] == ["20250101-", "-20250101", "20250101"]


def test_a_timezone_aware_not_before_keeps_its_zone() -> None:
    r = parse("studies:\n  - accession: A\nnot_before: '2026-11-26T20:00:00+01:00'\n")
    assert r.not_before is not None and r.not_before.utcoffset() is not None
    assert r.not_before.isoformat() == "2026-11-26T20:00:00+01:00"


def test_a_csv_with_an_accession_column_is_a_request_whatever_the_separator() -> None:
    for sep in (",", ";", "\t"):
        r = parse(f"\ufeffName{sep}Accession Number\nx{sep}A1\n\ny{sep}A2\n", filename="c.csv")
        assert [s.accession for s in r.studies] == ["A1", "A2"]
        assert r.name == "c"


def test_a_csv_without_an_accession_column_or_with_empty_cells_names_the_line() -> None:
    assert problems("Name,PatientID\nx,1\n", filename="c.csv") == [
        "At line 1: no accession-number column (a header such as 'AccessionNumber'; found 'name', 'patientid')"]
    assert problems("AccessionNumber,Name\nA1,x\n,y\n", filename="c.csv") == ["At line 3: empty accession number"]
    (p,) = problems("AccessionNumber\nA1\n\nA*\n", filename="c.csv")
    assert p.startswith("At line 4: 'A*' does not match")


def test_render_writes_a_request_that_parses_back() -> None:
    text = requests.render(["A1", "A2"], peer="backup", outputs=["nifti"], priority=3)
    r = parse(text)
    assert [s.accession for s in r.studies] == ["A1", "A2"]
    assert (r.peer, r.outputs, r.priority) == ("backup", ("nifti",), 3)


@pytest.mark.parametrize(
    ("series", "why"),
    [
        ({"Modality": "CT", "ImageType": ["DERIVED", "SECONDARY", "MPR"]}, "ImageType SECONDARY"),
        ({"Modality": "CT", "ImageType": ["DERIVED", "PRIMARY", "MIP"]}, "ImageType DERIVED\\PRIMARY\\MIP"),
        ({"Modality": "SR", "SeriesDescription": "Dose Report"}, "modality SR"),
        ({"Modality": "CT", "SeriesDescription": "Screen Save"}, "name 'screen save' (ImageType[0]=missing)"),
        ({"Modality": "CT", "SeriesDescription": "VRT bones"}, "name 'vrt' (ImageType[0]=missing)"),
        ({"Modality": "CT", "SeriesDescription": "Patient Protocol"}, "name 'patient protocol' (ImageType[0]=missing)"),
    ],
)
def test_derived_series_are_recognised_by_image_type_modality_or_description(series: dict[str, object], why: str) -> None:
    assert requests.derived_reason(series) == why


def test_acquisitions_are_not_derived() -> None:
    for series in ({"Modality": "MR", "ImageType": ["ORIGINAL", "PRIMARY", "M"], "SeriesDescription": "t1_mprage_sag"},
                   {"Modality": "CT", "SeriesDescription": "Thorax 1.0 B31f"},
                   {"Modality": "MR", "ImageType": ["DERIVED", "PRIMARY", "ADC"], "SeriesDescription": "ep2d_diff_ADC"}):
        assert requests.derived_reason(series) is None, series


def test_the_series_filter_says_why_it_skips_a_series() -> None:
    f = SeriesFilter(modality=("MR",), exclude_derived=True, min_instances=5, include=("t1|t2",), exclude=("loc",))
    assert f.verdict({"Modality": "MR", "SeriesDescription": "t1_tse"}, 20) is None
    assert f.verdict({"Modality": "CT", "SeriesDescription": "t1"}, 20) == "modality CT not in ['MR']"
    assert f.verdict({"Modality": "MR", "SeriesDescription": "t1_tse"}, 3) == "3 instance(s) < min_instances 5"
    assert f.verdict({"Modality": "MR", "SeriesDescription": "dwi"}, 20) == "description 'dwi' matches no include pattern"
    assert f.verdict({"Modality": "MR", "SeriesDescription": "t1 loc"}, 20) == (
        "description 't1 loc' matches exclude pattern 'loc'")
    assert f.verdict({"Modality": "MR", "SeriesDescription": "t1 MIP"}, 20) == "derived: name 'mip' (ImageType[0]=missing)"


def test_the_same_study_asked_twice_in_one_request_is_queried_once() -> None:
    from node.pull.requests import parse

    csv = "AccessionNumber\n" + "A1\n" * 2000 + "A2\nA1\n"
    request = parse("many.csv", csv.encode(), ["pacs"])
    assert [q.accession for q in request.studies] == ["A1", "A2"]


def test_a_study_can_be_asked_for_by_its_uid_alone() -> None:
    from node.pull.requests import parse

    req = parse("r.yaml", b"studies:\n  - study_uid: 1.2.840.99.1\n", ["pacs"])
    assert req.studies[0].dicom_query() == {"StudyInstanceUID": "1.2.840.99.1"}
    with pytest.raises(RequestError) as caught:
        parse("r.yaml", b"studies:\n  - study_uid: 1.2.840.99.1\n    modality: MR\n", ["pacs"])
    assert "study_date and modality go with patient_id, not with study_uid" in str(caught.value)
    with pytest.raises(RequestError):
        parse("r.yaml", b"studies:\n  - study_uid: ../../x\n", ["pacs"])
