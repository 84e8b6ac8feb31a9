"""MR_clean config: validation errors name the bad key, and sites extend keywords without touching code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from node.mr_clean import MrCleanConfigError, default_config_dict, load_config, process_mri_dataframe
from node.mr_clean.config import DEFAULT_CONFIG_PATH


def test_the_shipped_config_is_valid_and_is_the_default():
    cfg = load_config()
    assert cfg.source == str(DEFAULT_CONFIG_PATH)
    assert load_config(None) is cfg  # cached by path and mtime
    assert [s.cls for s in cfg.specials][:6] == ["LOCALIZER", "EXCLUDED", "FIELDMAP", "MRCP", "ASL", "T1_MAP"]


def test_a_wrong_type_is_reported_with_its_key_path():
    raw = default_config_dict()
    raw["orientation"]["obliqueThreshold"] = "high"
    with pytest.raises(MrCleanConfigError, match=r"At 'orientation\.obliqueThreshold': 'high' is not of type 'number'"):
        load_config(raw)


def test_a_misspelt_key_is_reported_instead_of_silently_ignored():
    raw = default_config_dict()
    raw["fatSuppression"]["keyword"] = raw["fatSuppression"].pop("keywords")
    with pytest.raises(MrCleanConfigError) as err:
        load_config(raw)
    text = str(err.value)
    assert "At 'fatSuppression': 'keywords' is a required property" in text
    assert "'keyword' was unexpected" in text


def test_every_problem_is_reported_at_once():
    raw = default_config_dict()
    del raw["dynamics"]["rounding"]["echoTimeMs"]
    raw["sequence"]["inversion"]["flairMinMs"]["3.0T"] = -5
    raw["manufacturer"]["vendors"]["Simens"] = ["simens"]
    raw["sequence"]["specials"][2]["class"] = "T2 MAP"
    with pytest.raises(MrCleanConfigError) as err:
        load_config(raw)
    text = str(err.value)
    assert "At 'dynamics.rounding': 'echoTimeMs' is a required property" in text
    assert "At 'sequence.inversion.flairMinMs.3.0T': -5" in text
    assert "At 'manufacturer.vendors': 'Simens' is not one of" in text
    assert "At 'sequence.specials[2].class': 'T2 MAP' does not match" in text


def test_a_broken_regular_expression_is_reported_with_its_location():
    raw = default_config_dict()
    raw["contrast"]["keywords"].append("re:post(")
    with pytest.raises(MrCleanConfigError, match=r"At 'contrast\.keywords\[\d+\]': invalid regular expression 're:post\('"):
        load_config(raw)


def test_an_inverted_stir_range_is_reported():
    raw = default_config_dict()
    raw["sequence"]["inversion"]["stirRangeMs"]["1.5T"] = [300, 100]
    with pytest.raises(MrCleanConfigError, match=r"stirRangeMs\.1\.5T': minimum 300 is above maximum 100"):
        load_config(raw)


def test_unreadable_or_non_json_files_give_a_clear_error(tmp_path: Path):
    with pytest.raises(MrCleanConfigError, match="cannot read MR_clean config"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1,\n  "orientation": }', encoding="utf-8")
    with pytest.raises(MrCleanConfigError, match=r"not JSON \(line 2, column"):
        load_config(bad)


SITE_ROW = {"Modality": "MR", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.1", "SeriesNumber": 1,
            "SeriesDescription": "T1 KM nativ ax", "ImageType": "ORIGINAL\\PRIMARY\\M"}


def test_a_site_adds_its_own_keywords_in_a_config_file_without_code_changes(tmp_path: Path):
    before = process_mri_dataframe(pd.DataFrame([{**SITE_ROW, "SeriesDescription": "T1 mit KM ax"}]))
    assert not before.loc[0, "isContrastEnhanced"]
    raw = default_config_dict()
    raw["contrast"]["keywords"].append("mit km")
    raw["fatSuppression"]["keywords"].append("re:fett(sat|sättigung)")
    site = tmp_path / "mr_clean.site.json"
    site.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    after = process_mri_dataframe(
        pd.DataFrame([{**SITE_ROW, "SeriesDescription": "T1 mit KM ax fettsättigung"}]), config_path=site
    )
    assert after.loc[0, "isContrastEnhanced"]
    assert after.loc[0, "isFatSuppressed"]
    assert "isContrastEnhanced: name 'mit km'" in str(after.loc[0, "evidence"])


def test_an_edited_config_file_is_reloaded(tmp_path: Path):
    raw = default_config_dict()
    path = tmp_path / "mr_clean.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    first = load_config(path)
    raw["orientation"]["obliqueThreshold"] = 0.9
    path.write_text(json.dumps(raw), encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_config(path).facts.oblique_threshold == 0.9
    assert first.facts.oblique_threshold == 0.95


def test_a_dict_passed_as_cfg_wins_over_config_path(tmp_path: Path):
    raw = default_config_dict()
    raw["orientation"]["obliqueThreshold"] = 0.99
    row = {**SITE_ROW, "ImageOrientationPatient": [1, 0, 0, 0, 0.98, -0.2]}
    out = process_mri_dataframe(pd.DataFrame([row]), cfg=raw, config_path=tmp_path / "does-not-matter.json")
    assert out.loc[0, "standardOrientation"] == "OBL"
