"""Study-level MR_clean tests: realistic breast DCE, liver DCE and brain protocols built as DICOM datasets."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from node.mr_clean import process_mri_dataframe
from tests.support.mr_studies import GRE_3D, LOCALIZER, breast_dce, frame, series
from toolkit.dicomgen import StudySpec


def expectations(out: pd.DataFrame) -> dict[int, tuple[Any, ...]]:
    cols = ["sequenceClass", "standardOrientation", "isFatSuppressed", "isContrastEnhanced", "dynamicPhase"]
    return {int(r["SeriesNumber"]): tuple(r[c] for c in cols) for r in out.to_dict("records")}




def test_breast_dce_protocol_gets_classes_phases_fat_sat_and_contrast():
    out = process_mri_dataframe(frame(breast_dce()))
    assert expectations(out) == {
        1: ("LOCALIZER", "AX", False, False, "NONE"),
        2: ("T2_TSE", "AX", False, False, "NONE"),
        3: ("T2_STIR", "AX", True, False, "NONE"),
        4: ("DWI", "AX", False, False, "NONE"),
        5: ("ADC", "AX", False, False, "NONE"),
        6: ("T1_GRE_SPOILED", "AX", True, False, "PRE"),
        7: ("T1_GRE_SPOILED", "AX", True, True, "POST_1"),
        8: ("T1_GRE_SPOILED", "AX", True, True, "POST_2"),
        9: ("T1_GRE_SPOILED", "AX", True, True, "POST_3"),
        10: ("T1_GRE_SPOILED", "AX", True, True, "POST_4"),
        11: ("T1_GRE_SPOILED", "AX", True, True, "POST_5"),
        12: ("SUBTRACTION", "AX", True, False, "NONE"),
        13: ("T1_GRE_SPOILED", "SAG", True, True, "POST_PROPAGATED"),
    }
    dyn = out[out["dynamicPhase"].str.match(r"PRE|POST_\d")]
    assert set(dyn["dynamicGroup"]) == {"DYN1"}
    assert (out.loc[out["dynamicGroup"] == "NONE", "SeriesNumber"].tolist()) == [1, 2, 3, 4, 5, 12, 13]
    assert list(out["SeriesNumber"]) == list(range(1, 14))  # acquisition order
    assert "dynamicGroup: excluded from dynamics (LOCALIZER" in str(out.loc[0, "evidence"])
    assert "isContrastEnhanced: propagated: acquired after the last known post-contrast" in str(out.loc[12, "evidence"])


def liver_dce() -> StudySpec:
    """GE 1.5T liver with LAVA-Flex; the agent was entered at registration so every series carries it."""
    common: dict[str, Any] = {
        "Manufacturer": "GE MEDICAL SYSTEMS", "ManufacturerModelName": "SIGNA Artist", "MagneticFieldStrength": 15000,
        "ContrastBolusAgent": "Gd-EOB-DTPA", "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"],
    }
    lava: dict[str, Any] = {
        **common, **GRE_3D, "SequenceVariant": "SS\\SP", "FlipAngle": 12, "EchoTime": 2.1, "RepetitionTime": 4.0,
    }
    specs = [
        series(1, "3-Plane Loc", "100000", **{**common, **LOCALIZER, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}),
        series(2, "Ax SSFSE T2", "100100", **common, ScanningSequence="SE", RepetitionTime=1100, EchoTime=90,
               EchoTrainLength=128),
        series(3, "Ax T2 FRFSE FS resp", "100300", **common, ScanningSequence="SE", RepetitionTime=6000, EchoTime=85,
               EchoTrainLength=18),
        series(4, "Ax DWI b800", "100600", **common, ScanningSequence="EP", RepetitionTime=6000, EchoTime=62),
        series(5, "ADC (10^-6 mm²/s)", "100601", **{**common, "ImageType": ["DERIVED", "PRIMARY", "ADC"]}),
        series(6, "InPhase: Ax LAVA-Flex", "100800", **lava),
        series(7, "OutPhase: Ax LAVA-Flex", "100800", **lava),
    ]
    phases = ["100801", "101200", "101300", "101500", "102500"]
    specs += [series(8 + i, "WATER: Ax LAVA-Flex", t, **lava) for i, t in enumerate(phases)]
    specs += [series(13, "WATER: Cor LAVA-Flex", "102700", orientation="COR", **lava)]
    return StudySpec(series=specs, study_description="MR liver")


def test_liver_dce_protocol_ignores_a_registration_agent_and_uses_the_dynamic_order():
    out = process_mri_dataframe(frame(liver_dce()))
    assert expectations(out) == {
        1: ("LOCALIZER", "AX", False, False, "NONE"),
        2: ("T2_SE_SingleShot", "AX", False, False, "NONE"),
        3: ("T2_TSE", "AX", True, False, "NONE"),
        4: ("DWI", "AX", False, False, "NONE"),
        5: ("ADC", "AX", False, False, "NONE"),
        6: ("T1_GRE_SPOILED_INPHASE", "AX", False, False, "NONE"),
        7: ("T1_GRE_SPOILED_OUTPHASE", "AX", False, False, "NONE"),
        8: ("T1_GRE_SPOILED_WATER", "AX", True, False, "PRE"),
        9: ("T1_GRE_SPOILED_WATER", "AX", True, True, "POST_1"),
        10: ("T1_GRE_SPOILED_WATER", "AX", True, True, "POST_2"),
        11: ("T1_GRE_SPOILED_WATER", "AX", True, True, "POST_3"),
        12: ("T1_GRE_SPOILED_WATER", "AX", True, True, "POST_4"),
        13: ("T1_GRE_SPOILED_WATER", "COR", True, True, "POST_PROPAGATED"),
    }
    assert set(out["standardFieldStrength"]) == {"1.5T"}
    assert set(out["standardManufacturer"]) == {"GE"}
    assert "ContrastBolusAgent is on every series of the study: ignored" in str(out.loc[5, "evidence"])


BRAIN_NAMES = {
    "philips": ["Survey", "T1W_TSE", "T2W_TSE", "T2W_FLAIR", "DWI", "dADC", "SWIp", "T1W_3D_TFE +C", "T1W_TSE_COR"],
    "uih": ["定位像", "T1WI 横断位", "T2WI 横断位", "T2 FLAIR 横断位", "DWI 弥散", "ADC", "SWI 磁敏感",
            "T1WI 增强 横断位", "T1WI 冠状位"],
}


def brain(vendor: str) -> StudySpec:
    names = BRAIN_NAMES[vendor]
    common: dict[str, Any] = (
        {"Manufacturer": "Philips Medical Systems", "ManufacturerModelName": "Ingenia", "MagneticFieldStrength": 3}
        if vendor == "philips"
        else {"Manufacturer": "UIH", "ManufacturerModelName": "uMR 780", "MagneticFieldStrength": 3.0}
    )
    tse: dict[str, Any] = {**common, "ScanningSequence": "SE", "MRAcquisitionType": "2D"}
    specs = [
        series(1, names[0], "080000", **{**common, **LOCALIZER}),
        series(2, names[1], "080100", **tse, RepetitionTime=550, EchoTime=10, EchoTrainLength=5),
        series(3, names[2], "080300", **tse, RepetitionTime=4000, EchoTime=100, EchoTrainLength=15),
        series(4, names[3], "080600", **{**tse, "ScanningSequence": "SE\\IR"}, RepetitionTime=11000, EchoTime=120,
               InversionTime=2800, EchoTrainLength=30),
        series(5, names[4], "080900", **common, ScanningSequence="SE", DiffusionBValue=lambda k: 0 if k < 2 else 1000,
               RepetitionTime=4500, EchoTime=75),
        series(6, names[5], "080901", **{**common, "ImageType": ["DERIVED", "PRIMARY", "ADC"]}),
        series(7, names[6], "081200", **common, ScanningSequence="GR", SequenceVariant="SP", RepetitionTime=31,
               EchoTime=7.2, FlipAngle=17, MRAcquisitionType="3D"),
        series(8, names[7], "082000", **{**common, **GRE_3D, "SequenceVariant": "SK\\SP", "RepetitionTime": 8.1,
                                         "EchoTime": 3.7, "FlipAngle": 8, "ContrastBolusAgent": "Gadovist"}),
        series(9, names[8], "082400", orientation="COR", **tse, RepetitionTime=550, EchoTime=10, EchoTrainLength=5),
    ]
    return StudySpec(series=specs, study_description="MR brain")


@pytest.mark.parametrize("vendor", sorted(BRAIN_NAMES))
def test_brain_protocol_gets_every_class_and_post_contrast_t1(vendor):
    out = process_mri_dataframe(frame(brain(vendor)))
    assert expectations(out) == {
        1: ("LOCALIZER", "AX", False, False, "NONE"),
        2: ("T1_TSE", "AX", False, False, "NONE"),
        3: ("T2_TSE", "AX", False, False, "NONE"),
        4: ("T2_FLAIR", "AX", False, False, "NONE"),
        5: ("DWI", "AX", False, False, "NONE"),
        6: ("ADC", "AX", False, False, "NONE"),
        7: ("SWI", "AX", False, False, "NONE"),
        8: ("T1_GRE_SPOILED", "AX", False, True, "NONE"),
        9: ("T1_TSE", "COR", False, True, "POST_PROPAGATED"),
    }
    assert "sequenceClass: physics TI=2800>=1600 (3.0T)" in str(out.loc[3, "evidence"])


def test_a_repeated_t1_without_contrast_evidence_is_not_a_dynamic_and_stays_unenhanced():
    specs = [series(1, "t1_vibe_tra", "090000", **GRE_3D), series(2, "t1_vibe_tra", "090300", **GRE_3D)]
    out = process_mri_dataframe(frame(StudySpec(series=specs)))
    assert out["dynamicGroup"].tolist() == ["NONE", "NONE"]
    assert out["dynamicPhase"].tolist() == ["NONE", "NONE"]
    assert out["isContrastEnhanced"].tolist() == [False, False]
    assert "without contrast evidence" in out["evidence"][0]


def test_magnitude_and_phase_of_one_acquisition_are_not_dynamic_phases():
    specs = [
        series(1, "t2_fl2d_tra_hemo", "090000", ImageType=["ORIGINAL", "PRIMARY", "M", "ND"], **GRE_3D),
        series(2, "t2_fl2d_tra_hemo", "090000", ImageType=["ORIGINAL", "PRIMARY", "P", "ND"], **GRE_3D),
    ]
    out = process_mri_dataframe(frame(StudySpec(series=specs)))
    assert out["dynamicGroup"].tolist() == ["NONE", "NONE"]


def test_dynamic_groups_are_per_study_and_do_not_mix_positions():
    moved = [series(1, "t1_vibe_tra", "090000", **GRE_3D), series(2, "t1_vibe_tra", "090300", **GRE_3D)]
    moved[1].origin = (-100.0, -120.0, 40.0)
    a = frame(StudySpec(series=moved))
    b = frame(StudySpec(series=[series(1, "t1_vibe_tra", "090000", **GRE_3D)], study_uid="1.2.3.4"))
    out = process_mri_dataframe(pd.concat([a, b], ignore_index=True))
    assert out["dynamicGroup"].tolist() == ["NONE", "NONE", "NONE"]


def test_propagation_after_the_first_known_post_contrast_series_is_a_config_choice():
    from node.mr_clean import default_config_dict

    specs = [
        series(1, "t1_tse_tra", "090000", ScanningSequence="SE", RepetitionTime=500, EchoTime=10, EchoTrainLength=3),
        series(2, "t1_tse_tra +C", "090500", ScanningSequence="SE", RepetitionTime=500, EchoTime=10, EchoTrainLength=3),
        series(3, "t1_tse_cor", "090800", orientation="COR", ScanningSequence="SE", RepetitionTime=500, EchoTime=10,
               EchoTrainLength=3),
        series(4, "t1_mprage_sag post", "091000", orientation="SAG", **{**GRE_3D, "InversionTime": 900}),
    ]
    df = frame(StudySpec(series=specs))
    last = process_mri_dataframe(df)
    assert last["isContrastEnhanced"].tolist() == [False, True, False, True]
    cfg = default_config_dict()
    cfg["contrast"]["propagation"]["after"] = "first"
    first = process_mri_dataframe(df, cfg)
    assert first["isContrastEnhanced"].tolist() == [False, True, True, True]
    # The pre and +C axial T1 share every acquisition parameter: they form a two-phase dynamic group.
    assert first["dynamicPhase"].tolist() == ["PRE", "POST_1", "POST_PROPAGATED", "NONE"]
