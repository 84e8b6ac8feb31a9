"""Orientation, localizer and derived are decided once (node.dicom.facts), so no two outputs disagree."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from node.dicom import facts
from node.dicom.facts import Derivation, Orientation
from node.process.nifti.volumes import looks_like_localizer, read_header
from node.process.workbook.metadata import build_workbook
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series, oblique_iop, write_datasets


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        ((1, 0, 0, 0, 1, 0), Orientation.AX),
        ((0, 1, 0, 0, 0, -1), Orientation.SAG),
        ((1, 0, 0, 0, 0, -1), Orientation.COR),
        (oblique_iop(15), Orientation.AX),
        (oblique_iop(20), Orientation.OBL),  # more than ~18 degrees from every axis
        ((1, 0, 0, 1, 0, 0), Orientation.UNKNOWN),  # degenerate: row and column parallel
        (None, Orientation.UNKNOWN),
    ],
)
def test_orientation_follows_the_dominant_axis_of_the_slice_normal(iop, expected) -> None:
    label, why = facts.orientation(iop)
    assert label is expected
    assert why


@pytest.mark.parametrize(
    ("image_type", "names", "modality", "expected"),
    [
        (("ORIGINAL", "PRIMARY", "M"), "t1 mpr cor", "MR", Derivation.ORIGINAL),  # ImageType decides when present
        (("DERIVED", "PRIMARY", "ADC"), "ep2d_diff_adc", "MR", Derivation.DERIVED),
        (("DERIVED", "PRIMARY", "MPR"), "t1", "CT", Derivation.SECONDARY),
        (("DERIVED", "SECONDARY"), "x", "CT", Derivation.SECONDARY),
        ((), "Screen Save", "CT", Derivation.SECONDARY),
        ((), "subtraction", "MR", Derivation.DERIVED),
        ((), "dose report", "SR", Derivation.SECONDARY),
        ((), "thorax 1.0 b31f", "CT", Derivation.UNKNOWN),
        ((), "func-bold_task-mpr_run-1", "MR", Derivation.SECONDARY),  # token boundaries, not substrings
        ((), "t1_mprage", "MR", Derivation.UNKNOWN),
    ],
)
def test_derivation_reads_image_type_first_and_names_only_without_it(image_type, names, modality, expected) -> None:
    kind, why = facts.derivation(image_type, names, modality)
    assert kind is expected, why


def test_a_localizer_is_named_by_image_type_or_name_or_shown_by_orthogonal_few_image_planes() -> None:
    ax, sag = (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)
    assert facts.localizer(("ORIGINAL", "PRIMARY", "LOCALIZER"), "t1") == "ImageType LOCALIZER"
    assert facts.localizer((), "aahead_scout_64ch") == "name 'aahead_scout'"
    assert facts.localizer((), "t2", [(ax, 3), (sag, 3)]) is not None
    assert facts.localizer((), "t2", [(ax, 30), (sag, 30)]) is None  # two real stacks, not a scout
    assert facts.localizer((), "t2_blocked_trial") is None  # 'loc' inside a word is not the keyword


def test_the_shipped_mr_clean_rules_use_the_same_words_as_the_node_wide_facts() -> None:
    rules = json.loads((resources.files("node.mr_clean") / "rules.json").read_text(encoding="utf-8"))
    default = facts.DEFAULT
    assert rules["orientation"]["obliqueThreshold"] == default.oblique_threshold
    assert frozenset(rules["imageType"]["localizerTokens"]) == default.localizer_tokens
    assert tuple(rules["imageType"]["localizerKeywords"]) == default.localizer_names.keywords
    assert tuple(rules["imageType"]["derivedKeywords"]) == default.derived_names.keywords


def test_the_workbook_sheets_and_the_nifti_step_agree_on_every_series(tmp_path: Path) -> None:
    study = StudySpec(series=[
        SeriesSpec(series_number=1, series_description="localizer", n_slices=3),
        SeriesSpec(series_number=2, series_description="t2_tse_obl", orientation=oblique_iop(40), n_slices=5),
        SeriesSpec(series_number=3, series_description="t1_tse_cor", orientation="COR", n_slices=5),
        SeriesSpec(series_number=4, series_description="t1_mpr_sag", orientation="SAG", n_slices=4,
                   extra={"ImageType": ["DERIVED", "SECONDARY", "MPR"]}),
    ])
    files: list[Path] = []
    for spec in study.series:
        files += write_datasets(make_series(study, spec), tmp_path / "study" / spec.series_uid)
    result = build_workbook(files, tmp_path / "study", tmp_path / "metadata.xlsx", workers=1)
    assert result.mr_cleaned is not None
    cleaned = {row["SeriesNumber"]: row for row in result.mr_cleaned.to_dict("records")}
    for row in result.series.to_dict("records"):
        mr = cleaned[row["SeriesNumber"]]
        assert row["Orientation"] == mr["standardOrientation"], row["SeriesNumber"]
        assert (row["Localizer"] == "yes") == (mr["refinedImageType"] == "LOCALIZER"), row["SeriesNumber"]
        if mr["refinedImageType"] != "LOCALIZER":
            assert (row["Derived"] == "yes") == (mr["refinedImageType"] == "DERIVED"), row["SeriesNumber"]
    for spec in study.series:
        slices = [s for f in sorted((tmp_path / "study" / spec.series_uid).iterdir()) for s in read_header(f)]
        summary = next(r for r in result.series.to_dict("records") if r["SeriesNumber"] == spec.series_number)
        assert looks_like_localizer(slices, spec.series_description) == (summary["Localizer"] == "yes")
    assert [cleaned[n]["standardOrientation"] for n in (2, 3, 4)] == ["OBL", "COR", "SAG"]
