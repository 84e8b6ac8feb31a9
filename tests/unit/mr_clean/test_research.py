"""MR_clean on research neuro protocols: BOLD, DTI, field maps, ASL, MPRAGE, BIDS names, per vendor."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from node.dicom import facts
from node.dicom.keywords import KeywordSet
from node.mr_clean import classify_series, load_config, make_record, process_mri_dataframe
from node.mr_clean.classify import SeriesFeatures
from node.pull.requests import derived_reason
from toolkit.dicomgen import SeriesSpec, StudySpec, make_multivolume_series, make_series, oblique_iop

CFG = load_config()
AX = [1, 0, 0, 0, 1, 0]
EPI_BOLD = {"ScanningSequence": "EP", "SequenceVariant": "SK\\SS", "RepetitionTime": 2000, "EchoTime": 30,
            "FlipAngle": 90, "MRAcquisitionType": "2D", "MagneticFieldStrength": 3}


def feats(**attrs: Any) -> SeriesFeatures:
    return classify_series(make_record({"ImageOrientationPatient": AX, **attrs}), CFG)


def series_rows(n_positions: int, n_volumes: int, **attrs: Any) -> list[dict[str, Any]]:
    """Instance rows of one series: n_volumes volumes at n_positions slice positions (classic one-slice files)."""
    rows = []
    for v in range(n_volumes):
        for p in range(n_positions):
            rows.append({"SeriesInstanceUID": attrs.get("SeriesInstanceUID", "1.2.3"), "Modality": "MR",
                         "InstanceNumber": v * n_positions + p + 1, "AcquisitionNumber": v + 1,
                         "ImagePositionPatient": [0.0, 0.0, 3.0 * p], "ImageOrientationPatient": AX,
                         **{k: (val(v) if callable(val) else val) for k, val in attrs.items()}})
    return rows


def classify_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = process_mri_dataframe(pd.DataFrame(rows))
    assert len(out) == 1
    return dict(out.iloc[0])


# ------------------------------------------------------------------------------------------------ BOLD


@pytest.mark.parametrize(
    ("vendor", "attrs"),
    [
        ("siemens classic", {"Manufacturer": "SIEMENS", "SequenceName": "epfid2d1_64", "SeriesDescription": "run1"}),
        ("ge", {"Manufacturer": "GE MEDICAL SYSTEMS", "ScanningSequence": "EP\\GR", "SeriesDescription": "Ax 2D"}),
        ("philips ffe-epi", {"Manufacturer": "Philips", "ScanningSequence": "GR", "SequenceVariant": "SK",
                             "SeriesDescription": "FE_EPI 32ch", "ImageType": "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"}),
        ("canon", {"Manufacturer": "CANON_MEC", "SeriesDescription": "EPI 3x3x3"}),
    ],
)
def test_an_epi_gradient_echo_time_series_is_bold_from_physics_without_a_bold_name(vendor: str, attrs: dict) -> None:
    row = classify_rows(series_rows(4, 12, **{**EPI_BOLD, **attrs}))
    assert row["sequenceClass"] == "fMRI_BOLD", row["evidence"]
    assert "12 volumes" in row["evidence"]


def test_a_siemens_mosaic_run_with_a_bids_name_is_bold_not_an_fa_map() -> None:
    rows = [{"SeriesInstanceUID": "1.2.9", "Modality": "MR", "InstanceNumber": i + 1, "AcquisitionNumber": i + 1,
             "ImageType": "ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC", "SeriesDescription": "func-bold_task-fa_run-1",
             "ImagePositionPatient": [0.0, 0.0, 0.0], **EPI_BOLD} for i in range(40)]
    row = classify_rows(rows)
    assert row["sequenceClass"] == "fMRI_BOLD", row["evidence"]
    assert row["sequenceFamily"] == "EPI"


def test_an_enhanced_xa_bold_file_is_bold_from_its_image_type_and_temporal_positions() -> None:
    f = feats(**EPI_BOLD, ImageType="ORIGINAL\\PRIMARY\\FMRI\\NONE", NumberOfTemporalPositions=300,
              SeriesDescription="sub-01_task-motor_bold")
    assert f.sequence_class == "fMRI_BOLD"


def test_a_single_volume_epi_reference_is_not_bold_even_with_a_bold_name() -> None:
    f = feats(**EPI_BOLD, SeriesDescription="func-bold_dir-PA_epi", NumberOfTemporalPositions=1)
    assert f.sequence_class != "fMRI_BOLD"
    assert f.family == "EPI"


def test_bids_names_match_keywords_on_token_boundaries_only() -> None:
    assert feats(SeriesDescription="anat-T1w_acq-mprage", ScanningSequence="GR\\IR", SequenceVariant="SP\\MP",
                 MRAcquisitionType="3D", RepetitionTime=2300, EchoTime=2.3, InversionTime=900,
                 FlipAngle=8).sequence_class == "T1_GRE_SPOILED"
    assert feats(SeriesDescription="fatsat_survey_comfort").image_kind.value == "LOCALIZER"  # 'survey' is a token
    assert feats(SeriesDescription="lofast_t2", **{"ScanningSequence": "SE", "EchoTrainLength": 16,
                                                   "RepetitionTime": 4000, "EchoTime": 90}).image_kind.value != "LOCALIZER"


# ------------------------------------------------------------------------------------------------ diffusion


def _dwi_rows(directions: list[tuple[float, float, float]], **attrs: Any) -> list[dict[str, Any]]:
    vols = [(0.0, (0.0, 0.0, 0.0))] + [(1000.0, d) for d in directions]
    return series_rows(2, len(vols), ScanningSequence="EP", SequenceVariant="SK\\SP", EchoTime=80, RepetitionTime=8000,
                       DiffusionBValue=lambda v: vols[v][0], DiffusionGradientOrientation=lambda v: list(vols[v][1]),
                       **attrs)


def _directions(n: int) -> list[tuple[float, float, float]]:
    golden = math.pi * (3 - math.sqrt(5))
    out = []
    for k in range(n):
        z = 1 - (k + 0.5) / n
        r = math.sqrt(1 - z * z)
        out.append((r * math.cos(golden * k), r * math.sin(golden * k), z))
    return out


def test_diffusion_with_many_gradient_directions_is_dti_and_with_three_is_dwi() -> None:
    dti = classify_rows(_dwi_rows(_directions(30), SeriesDescription="ep2d_diff_mddw"))
    assert dti["sequenceClass"] == "DTI" and "30 gradient directions" in dti["evidence"]
    trace = classify_rows(_dwi_rows([(1, 0, 0), (0, 1, 0), (0, 0, 1)], SeriesDescription="ep2d_diff_3scan_trace"))
    assert trace["sequenceClass"] == "DWI" and "3 gradient directions" in trace["evidence"]
    named = classify_rows(_dwi_rows(_directions(64), SeriesDescription="Ax DWI"))  # names lose to the directions
    assert named["sequenceClass"] == "DTI"


def test_ge_and_philips_per_axis_gradients_count_as_directions() -> None:
    dirs = _directions(25)
    vols = [(0.0, (0.0, 0.0, 0.0))] + [(1000.0, d) for d in dirs]
    rows = series_rows(2, len(vols), ScanningSequence="EP\\SE", EchoTime=85, DiffusionBValue=lambda v: vols[v][0],
                       GEDiffusionGradientX=lambda v: vols[v][1][0], GEDiffusionGradientY=lambda v: vols[v][1][1],
                       GEDiffusionGradientZ=lambda v: vols[v][1][2], Manufacturer="GE MEDICAL SYSTEMS")
    assert classify_rows(rows)["sequenceClass"] == "DTI"


def test_an_enhanced_diffusion_file_counts_the_directions_of_its_frames() -> None:
    frame_dirs = [list(d) for d in _directions(12)]
    f = classify_series(make_record({"DiffusionBValue": 1000, "ScanningSequence": "EP", "_gradient_directions": 12,
                                     "DiffusionGradientOrientation": frame_dirs}), CFG)
    assert f.sequence_class == "DTI"
    rows = [{"SeriesInstanceUID": "1.2.5", "Modality": "MR", "InstanceNumber": 1, "DiffusionBValue": 1000,
             "ScanningSequence": "EP", "DiffusionGradientOrientation": frame_dirs}]
    assert classify_rows(rows)["sequenceClass"] == "DTI"


# ------------------------------------------------------------------------------------------------ field maps, ASL


@pytest.mark.parametrize(
    "attrs",
    [
        {"SeriesDescription": "gre_field_mapping", "EchoNumbers": [1, 2], "ImageType": "ORIGINAL\\PRIMARY\\M\\ND"},
        {"SeriesDescription": "gre_field_mapping", "EchoNumbers": 2, "ImageType": "ORIGINAL\\PRIMARY\\P\\ND"},
        {"SeriesDescription": "B0 Map", "Manufacturer": "GE MEDICAL SYSTEMS"},
        {"SeriesDescription": "fmap-phasediff", "Manufacturer": "Philips"},
        {"SeriesDescription": "WIP B0", "ImageType": "ORIGINAL\\PRIMARY\\B0 MAP\\B0"},
        {"SeriesDescription": "dual echo", "EchoNumbers": [1, 2], "ImageType": "ORIGINAL\\PRIMARY\\P\\ND"},
    ],
    ids=["siemens magnitude", "siemens phasediff", "ge b0", "bids fmap", "philips b0 image type", "phase structure"],
)
def test_field_maps_are_recognised_by_name_image_type_or_structure(attrs: dict) -> None:
    f = feats(ScanningSequence="GR", SequenceVariant="SP", RepetitionTime=500, EchoTime=4.92, FlipAngle=60, **attrs)
    assert f.sequence_class == "FIELDMAP", f.evidence["sequenceClass"]


def test_a_derived_asl_perfusion_image_is_asl_not_a_subtraction() -> None:
    assert feats(ImageType="DERIVED\\PRIMARY\\ASL\\SUBTRACTION", SeriesDescription="pcasl_PWI").sequence_class == "ASL"
    assert feats(ImageType="DERIVED\\PRIMARY\\PERFUSION\\SUBTRACTION", SeriesDescription="perfusion_weighted").sequence_class \
        == "PWI"


def test_an_inversion_prepared_3d_gradient_echo_is_a_gre_even_when_ge_writes_ir() -> None:
    f = feats(Manufacturer="GE MEDICAL SYSTEMS", ScanningSequence="IR", SequenceVariant="SS\\SK", MRAcquisitionType="3D",
              RepetitionTime=7.2, EchoTime=2.9, InversionTime=450, FlipAngle=12, SeriesDescription="Sag 3D T1")
    assert f.sequence_class == "T1_GRE_SPOILED", f.evidence["sequenceClass"]
    assert f.family == "GRE_SPOILED"


# ------------------------------------------------------------------------------------------------ orientation, vocabulary


def test_a_plane_tilted_more_than_about_18_degrees_is_oblique_with_the_angle_in_the_evidence() -> None:
    f = feats(ImageOrientationPatient=list(oblique_iop(25, "x")))
    assert f.orientation.value == "OBL"
    assert "tilted 25 deg" in f.evidence["standardOrientation"]
    assert feats(ImageOrientationPatient=list(oblique_iop(12, "x"))).orientation.value == "AX"


def test_the_seed_vocabulary_columns_are_present() -> None:
    out = process_mri_dataframe(pd.DataFrame(
        series_rows(3, 1, SeriesDescription="t2_tse_tra", ScanningSequence="SE", EchoTrainLength=16, RepetitionTime=4000,
                    EchoTime=95, ImageType="ORIGINAL\\PRIMARY\\M\\ND")
        + series_rows(3, 1, SeriesInstanceUID="1.2.4", SeriesDescription="t1_mpr_cor", ImageType="DERIVED\\SECONDARY\\MPR")
    ))
    assert {"sequenceFamily", "isDerivedImage", "isSecondaryImage"} <= set(out.columns)
    first, mpr = out.to_dict("records")
    assert (first["sequenceFamily"], first["isDerivedImage"], first["isSecondaryImage"]) == ("TSE", False, False)
    assert (mpr["isDerivedImage"], mpr["isSecondaryImage"]) == (True, True)


@pytest.mark.parametrize("name", ["Screen Save", "Dose Report", "QA phantom weekly", "Patient Protocol"])
def test_series_that_are_not_images_of_the_patient_are_excluded(name: str) -> None:
    assert feats(SeriesDescription=name).sequence_class == "EXCLUDED"


def test_mrcp_is_its_own_class() -> None:
    f = feats(SeriesDescription="MRCP 3D", ScanningSequence="SE", EchoTrainLength=120, RepetitionTime=4500, EchoTime=700)
    assert f.sequence_class == "MRCP"


# ------------------------------------------------------------------------------------------------ request filter


def test_the_request_derived_filter_keeps_originals_whose_names_look_derived() -> None:
    assert derived_reason({"Modality": "MR", "SeriesDescription": "Ax 3D VIBRANT Mph+C"}) is None
    assert derived_reason({"Modality": "MR", "SeriesDescription": "W LongSpine MPR",
                           "ImageType": ["ORIGINAL", "PRIMARY", "M"]}) is None
    site = facts.Vocabulary(original_names=KeywordSet(["longspine"]))
    assert derived_reason({"Modality": "MR", "SeriesDescription": "W LongSpine MPR"}) is not None
    assert derived_reason({"Modality": "MR", "SeriesDescription": "W LongSpine MPR"}, site) is None


# ------------------------------------------------------------------------------------------------ a research session


def _session() -> pd.DataFrame:
    study = StudySpec(series=[])
    n = [0]

    def spec(desc: str, time: str, **extra: Any) -> SeriesSpec:
        n[0] += 1
        return SeriesSpec(series_number=n[0], series_description=desc, series_time=time, n_slices=2, rows=8, cols=8,
                          extra={"MagneticFieldStrength": 3, "Manufacturer": "SIEMENS", **extra})

    bold = {"ScanningSequence": "EP", "SequenceVariant": "SK\\SS", "RepetitionTime": 800, "EchoTime": 37, "FlipAngle": 52,
            "MRAcquisitionType": "2D"}
    datasets = []
    mprage = {"ScanningSequence": "GR\\IR", "SequenceVariant": "SP\\MP", "MRAcquisitionType": "3D", "RepetitionTime": 2300,
              "EchoTime": 2.3, "InversionTime": 900, "FlipAngle": 8}
    datasets += make_series(study, spec("anat-T1w_acq-mprage", "090000", **mprage))
    datasets += make_series(study, spec("anat-T2w", "090500", ScanningSequence="SE", SequenceVariant="SK", RepetitionTime=3200,
                                        EchoTime=410, EchoTrainLength=200, MRAcquisitionType="3D"))
    datasets += make_series(study, spec("anat-FLAIR", "091000", ScanningSequence="SE\\IR", RepetitionTime=5000, EchoTime=390,
                                        InversionTime=1800, EchoTrainLength=200, MRAcquisitionType="3D"))
    for run, time in ((1, "092000"), (2, "093000")):
        datasets += make_multivolume_series(study, spec(f"func-bold_task-rest_run-{run}", time, **bold),
                                            [{"AcquisitionNumber": v + 1} for v in range(12)])
    datasets += make_series(study, spec("fmap-epi_dir-PA", "094000", **bold))
    dirs = _directions(64)
    datasets += make_multivolume_series(study, spec("dwi_dir-AP", "094500", ScanningSequence="EP", SequenceVariant="SK\\SP",
                                                    RepetitionTime=3200, EchoTime=89, MRAcquisitionType="2D"),
                                        [{"DiffusionBValue": 0, "DiffusionGradientOrientation": [0, 0, 0]}]
                                        + [{"DiffusionBValue": 1000, "DiffusionGradientOrientation": list(d)} for d in dirs])
    gre_fm = {"ScanningSequence": "GR", "SequenceVariant": "SP", "RepetitionTime": 500, "EchoTime": 4.92, "FlipAngle": 60,
              "MRAcquisitionType": "2D"}
    datasets += make_multivolume_series(study, spec("gre_field_mapping", "095500", **gre_fm),
                                        [{"EchoNumbers": 1}, {"EchoNumbers": 2, "EchoTime": 7.38}])
    phase = ["ORIGINAL", "PRIMARY", "P", "ND"]
    datasets += make_series(study, spec("gre_field_mapping", "095501", EchoNumbers=2, ImageType=phase,
                                        **{**gre_fm, "EchoTime": 7.38}))
    datasets += make_series(study, spec("tgse_pcasl", "100000", ScanningSequence="GR\\SE", RepetitionTime=4100, EchoTime=37,
                                        MRAcquisitionType="3D"))
    datasets += make_series(study, spec("tgse_pcasl_PWI", "100001", ImageType=["DERIVED", "PRIMARY", "ASL", "SUBTRACTION"]))
    datasets += make_series(study, spec("swi_tra", "100500", ScanningSequence="GR", SequenceVariant="SP", RepetitionTime=27,
                                        EchoTime=20, FlipAngle=15, MRAcquisitionType="3D"))
    keys = ["StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ImageType", "ScanningSequence",
            "SequenceVariant", "MRAcquisitionType", "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
            "EchoTrainLength", "EchoNumbers", "MagneticFieldStrength", "Manufacturer", "ImageOrientationPatient",
            "ImagePositionPatient", "SeriesTime", "DiffusionBValue", "DiffusionGradientOrientation", "AcquisitionNumber",
            "Modality", "InstanceNumber"]
    return pd.DataFrame([{k: ds.get(k) for k in keys} for ds in datasets])


def test_a_research_neuro_session_gets_every_class_right_and_no_dynamic_group() -> None:
    out = process_mri_dataframe(_session())
    got = dict(zip(out["SeriesDescription"] + "#" + out["SeriesNumber"].astype(str), out["sequenceClass"], strict=True))
    assert got == {
        "anat-T1w_acq-mprage#1": "T1_GRE_SPOILED",
        "anat-T2w#2": "T2_TSE",
        "anat-FLAIR#3": "T2_FLAIR",
        "func-bold_task-rest_run-1#4": "fMRI_BOLD",
        "func-bold_task-rest_run-2#5": "fMRI_BOLD",
        "fmap-epi_dir-PA#6": "FIELDMAP",
        "dwi_dir-AP#7": "DTI",
        "gre_field_mapping#8": "FIELDMAP",
        "gre_field_mapping#9": "FIELDMAP",
        "tgse_pcasl#10": "ASL",
        "tgse_pcasl_PWI#11": "ASL",
        "swi_tra#12": "SWI",
    }, out[["SeriesDescription", "sequenceClass", "evidence"]].to_string()
    assert set(out["dynamicGroup"]) == {"NONE"}
    assert all(out["evidence"].str.contains("sequenceClass: "))
