"""Tag templates (etc/dicom_tags/*.json) load, cover what MR_clean needs, and fail loudly when wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from node.process.workbook.metadata import MR_CLEAN_KEYWORDS
from node.process.workbook.templates import TEMPLATES_DIR, TemplateError, load_templates

SHIPPED = ("mr.json", "ct.json", "dx.json", "mg.json", "default.json")


def write_template(folder: Path, name: str, attributes: list[dict], modalities: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"modalities": modalities or ["CT"], "attributes": attributes}), encoding="utf-8")
    return path


def templates_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "dicom_tags"
    shutil.copytree(TEMPLATES_DIR, folder)
    return folder


def test_the_shipped_templates_load_and_cover_every_modality_of_the_issue() -> None:
    assert sorted(p.name for p in TEMPLATES_DIR.glob("*.json")) == sorted(SHIPPED)
    templates = load_templates()
    assert templates.for_modality("MR").name == "mr"
    assert templates.for_modality("CT").name == "ct"
    for modality in ("DX", "CR", "DR"):
        assert templates.for_modality(modality).name == "dx"
    assert templates.for_modality("MG").name == "mg"
    assert templates.for_modality("US").name == "default"
    assert templates.for_modality(None).name == "default"


def test_the_mr_template_lists_everything_mr_clean_reads() -> None:
    keys = {a.key for a in load_templates().for_modality("MR").attributes}
    assert set(MR_CLEAN_KEYWORDS) - keys == set()
    assert "ImageType" in keys


def test_the_mr_b_value_reads_the_standard_tag_then_siemens_ge_and_philips_private_tags() -> None:
    (bvalue,) = [a for a in load_templates().for_modality("MR").attributes if a.key == "DiffusionBValue"]
    assert [(hex(s.path[0]), s.creator) for s in bvalue.sources] == [
        ("0x189087", None),
        ("0x19100c", "SIEMENS MR HEADER"),
        ("0x431039", "GEMS_PARM_01"),
        ("0x20011003", "Philips Imaging DD 001"),
    ]


@pytest.mark.parametrize(
    ("template", "keywords"),
    [
        ("CT", ["KVP", "Exposure", "CTDIvol", "ConvolutionKernel", "SliceThickness", "SpiralPitchFactor",
                "GantryDetectorTilt", "ContrastBolusAgent"]),
        ("DX", ["ViewPosition", "ImageLaterality", "Exposure", "DetectorType", "PresentationIntentType"]),
        ("MG", ["ViewPosition", "ImageLaterality", "Exposure", "DetectorType", "CompressionForce", "OrganDose",
                "PresentationIntentType"]),
    ],
)
def test_each_modality_template_has_the_attributes_the_issue_asks_for(template: str, keywords: list[str]) -> None:
    keys = {a.key for a in load_templates().for_modality(template).attributes}
    assert set(keywords) - keys == set()


def test_an_unknown_keyword_is_an_error_naming_the_file_and_the_entry(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    doc = json.loads((folder / "ct.json").read_text(encoding="utf-8"))
    doc["attributes"].insert(3, {"keyword": "KVp", "column": "kVp typo"})
    (folder / "ct.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(TemplateError, match=r"ct\.json: attributes\[3\]: unknown DICOM keyword 'KVp'"):
        load_templates(folder)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    write_template(folder, "us.json", [
        {"keyword": "NoSuchKeyword"},
        {"tag": "(0019,100C)", "key": "Private"},
        {"tag": "0008,00ZZ", "column": "bad"},
        {"keyword": "Modality.CodeMeaning"},
        {"keyword": "KVP", "transform": "square"},
    ], modalities=["US"])
    with pytest.raises(TemplateError) as info:
        load_templates(folder)
    message = str(info.value)
    assert "us.json: attributes[0]: unknown DICOM keyword 'NoSuchKeyword'" in message
    assert "us.json: attributes[1]: private tag (0019,100C) needs a \"vr\"" in message
    assert "us.json: attributes[2]: tag '0008,00ZZ' is not of the form (gggg,eeee)" in message
    assert "us.json: attributes[3]: 'Modality' in 'Modality.CodeMeaning' is not a sequence" in message
    assert "us.json: attributes[4]: unknown transform 'square'" in message


def test_invalid_json_is_an_error_with_its_line(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    (folder / "mg.json").write_text('{\n  "modalities": ["MG"],\n  "attributes": [,]\n}', encoding="utf-8")
    with pytest.raises(TemplateError, match=r"mg\.json: line 3 column \d+: invalid JSON"):
        load_templates(folder)


def test_two_templates_claiming_one_modality_is_an_error(tmp_path: Path) -> None:
    folder = templates_copy(tmp_path)
    write_template(folder, "ct2.json", [{"keyword": "KVP"}], modalities=["CT"])
    with pytest.raises(TemplateError, match=r"ct2\.json: modality 'CT' is already claimed by ct\.json"):
        load_templates(folder)


def test_a_directory_without_a_default_template_is_refused(tmp_path: Path) -> None:
    write_template(tmp_path, "ct.json", [{"keyword": "KVP"}])
    with pytest.raises(TemplateError, match="no default template"):
        load_templates(tmp_path)


def test_duplicate_columns_within_a_template_are_refused(tmp_path: Path) -> None:
    write_template(tmp_path, "default.json", [{"keyword": "KVP", "column": "X"}, {"keyword": "Exposure", "column": "X"}],
                   modalities=["*"])
    with pytest.raises(TemplateError, match=r"default\.json: attributes\[1\]: column 'X' is already used"):
        load_templates(tmp_path)


def test_a_private_entry_with_creator_and_vr_and_a_sequence_path_are_accepted(tmp_path: Path) -> None:
    write_template(tmp_path, "default.json", [
        {"tag": "(0029,1010)", "creator": "SIEMENS CSA HEADER", "vr": "OB", "key": "CsaImage", "column": "CSA"},
        {"keyword": "ViewCodeSequence.CodeMeaning", "column": "View"},
    ], modalities=["*"])
    (default,) = load_templates(tmp_path).templates
    assert [(a.key, a.column, a.vr) for a in default.attributes] == [
        ("CsaImage", "CSA", "OB"),
        ("ViewCodeSequence.CodeMeaning", "View", "LO"),
    ]
