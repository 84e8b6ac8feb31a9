"""Per-rule and per-class tests of MR_clean on hand-made series records, vendor by vendor."""

from __future__ import annotations

import math
from typing import Any

import pytest

from node.mr_clean import classify_series, load_config, make_record
from node.mr_clean.classify import SeriesFeatures
from toolkit.dicomgen import oblique_iop

CFG = load_config()
AX = [1, 0, 0, 0, 1, 0]
SAG = [0, 1, 0, 0, 0, -1]
COR = [1, 0, 0, 0, 0, -1]


def feats(**attrs: Any) -> SeriesFeatures:
    return classify_series(make_record(attrs), CFG)


def siemens(**attrs: Any) -> dict[str, Any]:
    return {"Manufacturer": "SIEMENS", "ManufacturerModelName": "MAGNETOM_Skyra", "MagneticFieldStrength": 3.0,
            "ImageType": "ORIGINAL\\PRIMARY\\M\\ND", "ImageOrientationPatient": AX, **attrs}


def ge(**attrs: Any) -> dict[str, Any]:
    return {"Manufacturer": "GE MEDICAL SYSTEMS", "ManufacturerModelName": "SIGNA Artist", "MagneticFieldStrength": 15000,
            "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"], "ImageOrientationPatient": AX, **attrs}


def philips(**attrs: Any) -> dict[str, Any]:
    return {"Manufacturer": "Philips Medical Systems", "ManufacturerModelName": "Ingenia", "MagneticFieldStrength": 3,
            "ImageType": "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", "ImageOrientationPatient": "1\\0\\0\\0\\1\\0", **attrs}


def uih(**attrs: Any) -> dict[str, Any]:
    return {"Manufacturer": "UIH", "ManufacturerModelName": "uMR 780", "MagneticFieldStrength": "3.0",
            "ImageType": ("ORIGINAL", "PRIMARY", "M", "NORM"), "ImageOrientationPatient": AX, **attrs}


GRE_T1 = {"ScanningSequence": "GR", "SequenceVariant": "SP", "RepetitionTime": 4.2, "EchoTime": 1.6, "FlipAngle": 10,
          "MRAcquisitionType": "3D"}
TSE_T2 = {"ScanningSequence": "SE", "SequenceVariant": "SK", "RepetitionTime": 4500, "EchoTime": 95,
          "EchoTrainLength": 17, "MRAcquisitionType": "2D"}
TSE_T1 = {"ScanningSequence": "SE", "SequenceVariant": "SK", "RepetitionTime": 550, "EchoTime": 10,
          "EchoTrainLength": 4, "MRAcquisitionType": "2D"}

# Each entry: test id, DICOM attributes, then the expected sequenceClass, fat-sat and motion flags.
VENDOR_SERIES = [
    # Siemens
    ("siemens vibe fs dyn", siemens(SeriesDescription="t1_vibe_fs_tra_dyn", **GRE_T1), "T1_GRE_SPOILED", True, False),
    ("siemens tirm cor", siemens(SeriesDescription="t2_tirm_cor", ScanningSequence="SE\\IR", RepetitionTime=4000,
                                 EchoTime=41, InversionTime=220, EchoTrainLength=9), "T2_STIR", True, False),
    ("siemens dark fluid", siemens(SeriesDescription="t2_tirm_tra_dark-fluid", ScanningSequence="SE\\IR",
                                   RepetitionTime=9000, EchoTime=81, InversionTime=2500, EchoTrainLength=16),
     "T2_FLAIR", False, False),
    ("siemens mprage", siemens(SeriesDescription="t1_mprage_sag_p2_iso", ScanningSequence="GR\\IR",
                               SequenceVariant="SK\\SP\\MP", RepetitionTime=2300, EchoTime=2.3, InversionTime=900,
                               FlipAngle=8, MRAcquisitionType="3D"), "T1_GRE_SPOILED", False, False),
    ("siemens space", siemens(SeriesDescription="t2_space_sag_p2_iso", ScanningSequence="SE", RepetitionTime=3200,
                              EchoTime=409, EchoTrainLength=258, MRAcquisitionType="3D"), "T2_TSE", False, False),
    ("siemens haste", siemens(SeriesDescription="t2_haste_cor_mbh", ScanningSequence="SE", RepetitionTime=1400,
                              EchoTime=92, EchoTrainLength=128, MRAcquisitionType="2D"), "T2_SE_SingleShot", False, False),
    ("siemens blade", siemens(SeriesDescription="t2_tse_tra_blade", **TSE_T2), "T2_TSE_MC", False, True),
    ("siemens t1 tse", siemens(SeriesDescription="t1_tse_tra", **TSE_T1), "T1_TSE", False, False),
    ("siemens pd fs", siemens(SeriesDescription="pd_tse_fs_cor", ScanningSequence="SE", RepetitionTime=3000,
                              EchoTime=33, EchoTrainLength=7), "PD_TSE", True, False),
    ("siemens twist", siemens(SeriesDescription="t1_twist_tra_dyn", **GRE_T1), "T1_GRE_SPOILED", False, False),
    ("siemens dixon water", siemens(SeriesDescription="t1_vibe_dixon_tra_W", ImageType="DERIVED\\PRIMARY\\DIXON\\WATER",
                                    **GRE_T1), "T1_GRE_SPOILED_WATER", True, False),
    ("siemens dixon opp", siemens(SeriesDescription="t1_vibe_dixon_tra_opp",
                                  ImageType="DERIVED\\PRIMARY\\DIXON\\OPP_PHASE", **GRE_T1),
     "T1_GRE_SPOILED_OUTPHASE", False, False),
    ("siemens hemo t2star", siemens(SeriesDescription="t2_fl2d_tra_hemo", ScanningSequence="GR", SequenceVariant="SP",
                                    RepetitionTime=650, EchoTime=20, FlipAngle=20), "T2STAR_GRE_SPOILED", False, False),
    ("siemens trufi", siemens(SeriesDescription="trufi_loc_cor", ScanningSequence="GR", SequenceVariant="SK\\SS",
                              RepetitionTime=3.5, EchoTime=1.5, FlipAngle=60, ImageType="ORIGINAL\\PRIMARY\\M\\ND"),
     "LOCALIZER", False, False),
    ("siemens trufi cine", siemens(SeriesDescription="trufi_cor_bh", ScanningSequence="GR", SequenceVariant="SK\\SS",
                                   RepetitionTime=3.5, EchoTime=1.5, FlipAngle=60), "T2_GRE_STEADY_STATE", False, False),
    ("siemens bold", siemens(SeriesDescription="ep2d_bold_rest", ScanningSequence="EP", SequenceVariant="SK",
                             RepetitionTime=2000, EchoTime=30, FlipAngle=90), "fMRI_BOLD", False, False),
    ("siemens dwi", siemens(SeriesDescription="ep2d_diff_tra", ScanningSequence="EP", DiffusionBValue=1000,
                            RepetitionTime=5000, EchoTime=70), "DWI", False, False),
    ("siemens dti", siemens(SeriesDescription="ep2d_diff_mddw_30", ScanningSequence="EP", DiffusionBValue=1000),
     "DTI", False, False),
    ("siemens adc", siemens(SeriesDescription="ep2d_diff_tra_ADC", ImageType="DERIVED\\PRIMARY\\DIFFUSION\\ADC",
                            ScanningSequence="EP"), "ADC", False, False),
    ("siemens fa", siemens(SeriesDescription="ep2d_diff_mddw_FA", ImageType="DERIVED\\PRIMARY\\DIFFUSION\\FA"),
     "FA_MAP", False, False),
    ("siemens scout", siemens(SeriesDescription="AAHead_Scout_32ch-head-coil", **GRE_T1), "LOCALIZER", False, False),
    ("siemens tof", siemens(SeriesDescription="tof_fl3d_tra_p2", **GRE_T1), "MRA", False, False),
    ("siemens swi", siemens(SeriesDescription="SWI_Images", ImageType="ORIGINAL\\PRIMARY\\SWI\\NORM"), "SWI", False, False),
    ("siemens perf", siemens(SeriesDescription="ep2d_perf", ScanningSequence="EP"), "PWI", False, False),
    ("siemens pcasl", siemens(SeriesDescription="tgse_pcasl_PLD1800", ScanningSequence="SE\\EP"), "ASL", False, False),
    ("siemens svs", siemens(SeriesDescription="svs_se_135"), "MRS", False, False),
    ("siemens molli", siemens(SeriesDescription="MOLLI_T1 MAP", ImageType="DERIVED\\PRIMARY\\T1 MAP"), "T1_MAP", False,
     False),
    ("siemens t2 map moco", siemens(SeriesDescription="T2Map_MOCO"), "T2_MAP", False, True),
    ("siemens sub", siemens(SeriesDescription="t1_vibe_fs_tra_dyn_SUB", ImageType="DERIVED\\PRIMARY\\SUBTRACT"),
     "SUBTRACTION", True, False),
    ("siemens mip", siemens(SeriesDescription="t1_vibe_fs_tra_MIP", ImageType="DERIVED\\SECONDARY\\MIP"), "MIP", True,
     False),
    ("siemens navigator", siemens(SeriesDescription="Navigator_sag"), "NAVIGATOR", False, False),
    # GE
    ("ge lava flex water", ge(SeriesDescription="WATER: Ax LAVA-Flex", **GRE_T1), "T1_GRE_SPOILED_WATER", True, False),
    ("ge lava flex fat", ge(SeriesDescription="FAT: Ax LAVA-Flex", **GRE_T1), "T1_GRE_SPOILED_FAT", False, False),
    ("ge lava flex inphase", ge(SeriesDescription="InPhase: Ax LAVA-Flex", **GRE_T1), "T1_GRE_SPOILED_INPHASE", False,
     False),
    ("ge lava flex outphase", ge(SeriesDescription="OutPhase: Ax LAVA-Flex", **GRE_T1), "T1_GRE_SPOILED_OUTPHASE", False,
     False),
    ("ge dwi b800 no b-value", ge(SeriesDescription="Ax DWI b800", ScanningSequence="EP", SequenceVariant="NONE",
                                 RepetitionTime=6000, EchoTime=62), "DWI", False, False),
    ("ge fspgr", ge(SeriesDescription="Sag FSPGR BRAVO", ScanningSequence="GR", SequenceVariant="SS\\SP\\SK",
                    RepetitionTime=8.2, EchoTime=3.2, InversionTime=450, FlipAngle=12, MRAcquisitionType="3D"),
     "T1_GRE_SPOILED", False, False),
    ("ge cube", ge(SeriesDescription="Sag CUBE T2", ScanningSequence="SE", RepetitionTime=2500, EchoTime=90,
                   EchoTrainLength=100, MRAcquisitionType="3D"), "T2_TSE", False, False),
    ("ge frfse fs", ge(SeriesDescription="Ax T2 FRFSE FS", **TSE_T2), "T2_TSE", True, False),
    ("ge propeller", ge(SeriesDescription="Ax T2 PROPELLER", **TSE_T2), "T2_TSE_MC", False, True),
    ("ge ssfse", ge(SeriesDescription="Ax SSFSE T2", ScanningSequence="SE", RepetitionTime=1200, EchoTime=90,
                    EchoTrainLength=128), "T2_SE_SingleShot", False, False),
    ("ge flair 1.5T", ge(SeriesDescription="Ax T2 FLAIR", ScanningSequence="SE\\IR", RepetitionTime=8000,
                         EchoTime=120, InversionTime=2000, EchoTrainLength=20), "T2_FLAIR", False, False),
    ("ge disco star", ge(SeriesDescription="Ax DISCO Star", **GRE_T1), "T1_GRE_SPOILED_MC", True, True),
    ("ge fiesta", ge(SeriesDescription="Cor FIESTA", ScanningSequence="GR", SequenceVariant="SS", RepetitionTime=3.6,
                     EchoTime=1.6, FlipAngle=55), "T2_GRE_STEADY_STATE", False, False),
    ("ge swan", ge(SeriesDescription="Ax SWAN"), "SWI", False, False),
    ("ge 3-plane loc", ge(SeriesDescription="3-Plane Loc", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
     "LOCALIZER", False, False),
    # Philips
    ("philips ethrive", philips(SeriesDescription="eTHRIVE", ScanningSequence="GR", SequenceVariant="SK",
                                RepetitionTime=4.1, EchoTime=2.0, FlipAngle=10, MRAcquisitionType="3D"),
     "T1_GRE_SPOILED", True, False),
    ("philips t2w spair", philips(SeriesDescription="T2W_SPAIR", **TSE_T2), "T2_TSE", True, False),
    ("philips t1w tse", philips(SeriesDescription="T1W_TSE", **TSE_T1), "T1_TSE", False, False),
    ("philips multivane", philips(SeriesDescription="T2W_TSE_MultiVane", **TSE_T2), "T2_TSE_MC", False, True),
    ("philips dwi", philips(SeriesDescription="DWI_SENSE", ScanningSequence="SE", DiffusionBValue=1000), "DWI", False,
     False),
    ("philips mdixon water", philips(SeriesDescription="mDIXON_W", ImageType="ORIGINAL\\PRIMARY\\W\\W", **GRE_T1),
     "T1_GRE_SPOILED_WATER", True, False),
    ("philips 3d tfe", philips(SeriesDescription="sT1W_3D_TFE", ScanningSequence="GR", SequenceVariant="SK\\MP",
                               RepetitionTime=8.1, EchoTime=3.7, FlipAngle=8, MRAcquisitionType="3D"),
     "T1_GRE_SPOILED", False, False),
    ("philips view flair", philips(SeriesDescription="3D_Brain_VIEW_FLAIR", ScanningSequence="SE\\IR",
                                   RepetitionTime=4800, EchoTime=320, InversionTime=1650, EchoTrainLength=167,
                                   MRAcquisitionType="3D"), "T2_FLAIR", False, False),
    ("philips survey", philips(SeriesDescription="Survey"), "LOCALIZER", False, False),
    ("philips swip", philips(SeriesDescription="SWIp"), "SWI", False, False),
    # United Imaging
    ("uih quick3d fs", uih(SeriesDescription="t1_quick3d_tra_fs", ScanningSequence="GR", SequenceVariant="SP",
                           RepetitionTime=3.9, EchoTime=1.4, FlipAngle=10, MRAcquisitionType="3D"),
     "T1_GRE_SPOILED", True, False),
    ("uih fse fs", uih(SeriesDescription="t2_fse_tra_fs", **TSE_T2), "T2_TSE", True, False),
    ("uih dwi name", uih(SeriesDescription="dwi_b800_tra"), "DWI", False, False),
    ("uih arms", uih(SeriesDescription="t2_fse_tra_arms", **TSE_T2), "T2_TSE_MC", False, True),
    ("uih chinese t2 fs no physics", uih(SeriesDescription="T2WI 横断位 压脂"), "T2", True, False),
    ("uih chinese dwi", uih(SeriesDescription="弥散加权成像"), "DWI", False, False),
    ("uih chinese localizer", uih(SeriesDescription="定位像"), "LOCALIZER", False, False),
    ("uih chinese swi", uih(SeriesDescription="磁敏感加权 SWI"), "SWI", False, False),
]


@pytest.mark.parametrize(("attrs", "cls", "fat", "mc"), [v[1:] for v in VENDOR_SERIES], ids=[v[0] for v in VENDOR_SERIES])
def test_each_vendor_series_gets_its_class_fat_sat_and_motion_flags(attrs, cls, fat, mc):
    f = feats(**attrs)
    assert (f.sequence_class, f.fat_suppressed, f.motion_corrected) == (cls, fat, mc), dict(f.evidence)


def test_the_evidence_names_the_physics_rule_that_decided_flair():
    f = feats(**siemens(SeriesDescription="whatever", ScanningSequence="SE\\IR", InversionTime=2500,
                        RepetitionTime=9000, EchoTime=81, EchoTrainLength=16))
    assert f.sequence_class == "T2_FLAIR"
    assert f.evidence["sequenceClass"] == "physics TI=2500>=1600 (3.0T)"


def test_flair_minimum_ti_depends_on_the_field_strength():
    attrs = {"ScanningSequence": "SE\\IR", "InversionTime": 1500, "RepetitionTime": 8000, "EchoTime": 100,
             "EchoTrainLength": 16, "SeriesDescription": "ax ir"}
    assert feats(MagneticFieldStrength=1.5, **attrs).sequence_class == "T2_FLAIR"
    assert feats(MagneticFieldStrength=3.0, **attrs).sequence_class != "T2_FLAIR"


def test_t1_and_t2_thresholds_differ_between_1_5t_and_3t():
    attrs = {"ScanningSequence": "SE", "EchoTrainLength": 3, "RepetitionTime": 900, "EchoTime": 12}
    assert feats(MagneticFieldStrength=3.0, **attrs).sequence_class == "T1_TSE"
    assert feats(MagneticFieldStrength=1.5, **attrs).sequence_class == "TSE"  # between the 1.5T T1 and long-TR limits
    long_tr = {"ScanningSequence": "SE", "EchoTrainLength": 12, "RepetitionTime": 1800, "EchoTime": 90}
    assert feats(MagneticFieldStrength=1.5, **long_tr).sequence_class == "T2_TSE"
    assert feats(MagneticFieldStrength=3.0, **long_tr).sequence_class == "TSE"


def test_physics_family_without_decisive_timing_takes_the_weighting_from_the_name():
    f = feats(SeriesDescription="t2_tse_tra", ScanningSequence="SE", EchoTrainLength=12, RepetitionTime=1200,
              EchoTime=50, MagneticFieldStrength=3)
    assert f.sequence_class == "T2_TSE"
    assert "weighting name 't2'" in f.evidence["sequenceClass"]


def test_stir_ti_range_is_fat_suppressed_and_not_used_for_gradient_echo():
    stir = feats(**siemens(SeriesDescription="cor ir", ScanningSequence="SE\\IR", InversionTime=230, EchoTime=40,
                           RepetitionTime=5000, EchoTrainLength=9))
    assert (stir.sequence_class, stir.fat_suppressed) == ("T2_STIR", True)
    gre = feats(**siemens(SeriesDescription="tfl", ScanningSequence="GR\\IR", SequenceVariant="SP", InversionTime=230,
                          EchoTime=2, FlipAngle=8, RepetitionTime=1800))
    assert (gre.sequence_class, gre.fat_suppressed) == ("T1_GRE_SPOILED", False)


def test_name_fallback_classifies_series_without_any_physics():
    cases = {"Ax T2 FLAIR": "T2_FLAIR", "Sag T1 FLAIR": "T1", "t2_tirm_cor": "T2_STIR", "Sag MPRAGE": "T1_GRE_SPOILED",
             "PD FSE": "PD_TSE", "T1 SE": "T1_SE", "T2*": "T2STAR_GRE", "B-TFE_BH": "T2_GRE_STEADY_STATE",
             "sT1W_3D_TFE": "T1_GRE_SPOILED", "MRCP 3D": "MRCP", "t2_tse_tra_fs_nav": "T2_TSE",
             "random words": "UNKNOWN", "": "UNKNOWN"}
    got = {d: feats(SeriesDescription=d).sequence_class for d in cases}
    assert got == cases


def test_echo_suffix_is_added_only_for_a_single_later_echo():
    attrs = siemens(SeriesDescription="t2_tse_dual", **TSE_T2)
    assert feats(EchoNumbers=2, **attrs).sequence_class == "T2_TSE_ECHO2"
    assert feats(EchoNumbers=1, **attrs).sequence_class == "T2_TSE"
    assert feats(EchoNumbers=[1, 2], **attrs).sequence_class == "T2_TSE"


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        (AX, "AX"), (SAG, "SAG"), (COR, "COR"),
        (list(oblique_iop(15, "x")), "AX"), (list(oblique_iop(20, "x")), "OBL"), (list(oblique_iop(50, "x")), "OBL"),
        ("0\\1\\0\\0\\0\\-1", "SAG"), ("1,0,0,0,0,-1", "COR"),
    ],
)
def test_orientation_comes_from_the_slice_normal(iop, expected):
    assert feats(ImageOrientationPatient=iop, SeriesDescription="t1_sag").orientation.value == expected


@pytest.mark.parametrize("junk", ["", None, float("nan"), "1\\0\\x\\0\\1\\0", [1, 0, 0], "garbage", [0, 0, 0, 0, 0, 0]])
def test_orientation_without_a_usable_iop_falls_back_to_the_name_then_unknown(junk):
    assert feats(ImageOrientationPatient=junk, SeriesDescription="t2_tse_cor").orientation.value == "COR"
    assert feats(ImageOrientationPatient=junk, SeriesDescription="T2WI 矢状位").orientation.value == "SAG"
    assert feats(ImageOrientationPatient=junk, SeriesDescription="series 7").orientation.value == "UNKNOWN"


def test_oblique_threshold_comes_from_the_config():
    raw = dict(CFG.raw)
    raw["orientation"] = {**raw["orientation"], "obliqueThreshold": 0.8}
    lenient = load_config(raw)
    rec = make_record({"ImageOrientationPatient": list(oblique_iop(25, "x"))})
    assert classify_series(rec, CFG).orientation.value == "OBL"  # the default: more than ~18 degrees is oblique
    assert classify_series(rec, lenient).orientation.value == "AX"
    assert "tilted 25 deg" in classify_series(rec, CFG).evidence["standardOrientation"]


@pytest.mark.parametrize(
    ("value", "model", "expected"),
    [
        (0.35, "", "Low-Field"), (1.5, "", "1.5T"), (1.494, "", "1.5T"), (3, "", "3.0T"), ("2.89", "", "3.0T"),
        (7.0, "", "High-Field"), (15000, "", "1.5T"), (30000, "", "3.0T"), (None, "MAGNETOM Skyra", "3.0T"),
        (float("nan"), "Aera", "1.5T"), ("3T", "uMR 780", "3.0T"), ("junk", "", "UNKNOWN"), (None, "Achieva", "UNKNOWN"),
        (0, "", "UNKNOWN"),
    ],
)
def test_field_strength_buckets_with_gauss_and_model_fallback(value, model, expected):
    f = feats(MagneticFieldStrength=value, ManufacturerModelName=model)
    assert f.field_strength.value == expected, f.evidence["standardFieldStrength"]


@pytest.mark.parametrize(
    ("maker", "expected"),
    [
        ("SIEMENS", "Siemens"), ("Siemens Healthineers", "Siemens"), ("GE MEDICAL SYSTEMS", "GE"),
        ("GE HEALTHCARE", "GE"), ("Philips Medical Systems", "Philips"), ("Philips", "Philips"), ("UIH", "UIH"),
        ("United Imaging Healthcare", "UIH"), ("上海联影医疗", "UIH"), ("TOSHIBA_MEC", "Canon"),
        ("Canon Medical Systems", "Canon"), ("FUJIFILM Healthcare", "Fujifilm/Hitachi"),
        ("Hitachi Medical Corporation", "Fujifilm/Hitachi"), ("Anke", "Anke"), ("MINDRAY", "Mindray"),
        ("SHIMADZU", "Shimadzu"), ("Esaote", "Other"), ("", "Other"), (None, "Other"), (float("nan"), "Other"),
        ("AGE Imaging", "Other"),
    ],
)
def test_manufacturer_is_normalised(maker, expected):
    assert feats(Manufacturer=maker).manufacturer.value == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("MAGNETOM_Skyra", "Skyra"), ("SIGNA Architect", "SIGNA Architect"), (" Ingenia ", "Ingenia"),
     ("uMR  780", "uMR 780"), ("", ""), (None, "")],
)
def test_model_name_is_cleaned(model, expected):
    assert feats(ManufacturerModelName=model).model_name == expected


@pytest.mark.parametrize(
    ("acq", "name", "expected"),
    [("3D", "", "3D"), ("2D", "t1_vibe", "2D"), (None, "t1_vibe_fs_tra", "3D"), ("", "t2_tse2d", "2D"),
     (float("nan"), "series", "UNKNOWN"), ("junk", "", "UNKNOWN")],
)
def test_dimension_from_acquisition_type_then_names(acq, name, expected):
    assert feats(MRAcquisitionType=acq, SeriesDescription=name).dimension.value == expected


@pytest.mark.parametrize(
    ("image_type", "name", "expected"),
    [
        ("ORIGINAL\\PRIMARY\\M\\ND", "t1", "ORIGINAL"), (["DERIVED", "PRIMARY", "MPR"], "t1", "DERIVED"),
        ("ORIGINAL\\PRIMARY\\LOCALIZER", "t1", "LOCALIZER"), ("ORIGINAL\\PRIMARY\\M", "localizer", "LOCALIZER"),
        ("['DERIVED', 'SECONDARY']", "x", "DERIVED"), ("", "t1 MPR cor", "DERIVED"), (None, "t1", "OTHER"),
        ("SECONDARY", "t1", "DERIVED"),  # ImageType SECONDARY: the node-wide decision (node.dicom.facts)
    ],
)
def test_refined_image_type_from_image_type_then_names(image_type, name, expected):
    assert feats(ImageType=image_type, SeriesDescription=name).image_kind.value == expected


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"ScanOptions": "PFP\\FS", "SeriesDescription": "t1"}, True),
        ({"ScanOptions": ["FAST_GEMS", "FS"], "SeriesDescription": "t1"}, True),
        ({"SeriesDescription": "T1 non FS"}, False),
        ({"SeriesDescription": "Ax T1 FSPGR"}, False),
        ({"SeriesDescription": "t1_fl3d_fatsat"}, True),
        ({"SeriesDescription": "T1W_FFE_SPIR"}, True),
        ({"SeriesDescription": "Ax T1 FS"}, True),
        ({"SeriesDescription": "FSE T2"}, False),
        ({"SeriesDescription": "T2 压脂"}, True),
        ({"SeriesDescription": "T2WI 抑脂 横断"}, True),
        ({"SeriesDescription": "t1_vibe_dixon_tra"}, True),
        ({"SeriesDescription": "t1_vibe_dixon_tra_in"}, False),
        ({"SeriesDescription": "Ax T1"}, False),
    ],
)
def test_fat_suppression_rules(attrs, expected):
    f = feats(**attrs)
    assert f.fat_suppressed is expected, f.evidence["isFatSuppressed"]


@pytest.mark.parametrize(
    ("desc", "expected"),
    [("t2_tse_tra_blade", True), ("Ax T2 PROPELLER", True), ("T2W_MultiVane", True), ("t1_starvibe_tra", True),
     ("t1_radial_vibe", True), ("T1 stack-of-stars", True), ("LAVA Star", True), ("T2 star", False),
     ("t2_star_tra", False), ("t2star", False), ("t2_tse_tra", False)],
)
def test_motion_correction_from_names(desc, expected):
    assert feats(SeriesDescription=desc).motion_corrected is expected


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"SeriesDescription": "T1+C"}, True),
        ({"SeriesDescription": "Ax T1 POST"}, True),
        ({"SeriesDescription": "t1_vibe_fs_tra_gd"}, True),
        ({"SeriesDescription": "T1W_3D_TFE +C"}, True),
        ({"SeriesDescription": "T1WI 增强 横断"}, True),
        ({"SeriesDescription": "Ax T1 postop"}, False),
        ({"SeriesDescription": "T1C+ ax"}, True),
        ({"SeriesDescription": "t1_vibe_tra_caipi_arterial"}, True),
        ({"SeriesDescription": "t1_vibe_tra_portal venous"}, True),
        ({"SeriesDescription": "Ax LAVA delayed"}, True),
        ({"SeriesDescription": "T1WI 门脉期"}, True),
        ({"SeriesDescription": "头颅 平扫 T1"}, False),
        ({"SeriesDescription": "T1 pre"}, False),
        ({"SeriesDescription": "t1", "ContrastBolusAgent": "Gadovist"}, True),
        ({"SeriesDescription": "t1", "ContrastBolusAgent": "NONE"}, False),
        ({"SeriesDescription": "t1", "ContrastBolusAgent": " no "}, False),
        ({"SeriesDescription": "t1 pre", "ContrastBolusAgent": "Gadovist"}, False),
        ({"SeriesDescription": "Ax DWI +C", "DiffusionBValue": 1000}, False),
        ({"SeriesDescription": "t2_tse_tra_post", **TSE_T2}, False),
        ({"SeriesDescription": "localizer", "ContrastBolusAgent": "Gadovist"}, False),
        ({"SeriesDescription": "ep2d_perf"}, True),
    ],
)
def test_contrast_from_names_and_agent_never_for_dwi_t2_or_localizers(attrs, expected):
    f = feats(**attrs)
    assert f.contrast_enhanced is expected, f.evidence["isContrastEnhanced"]


JUNK = [
    {"RepetitionTime": "abc", "EchoTime": float("nan"), "FlipAngle": "n/a", "EchoTrainLength": "x"},
    {"RepetitionTime": None, "EchoTime": math.inf, "InversionTime": "", "ImageOrientationPatient": ""},
    {"RepetitionTime": [], "EchoTime": "1\\2\\junk", "ImageType": 12, "ScanningSequence": float("nan"),
     "ImageOrientationPatient": "1\\0\\0"},
]
VENDOR_DESCRIPTIONS = {siemens: "t2_tse_tra", ge: "Ax T2 FRFSE", philips: "T2W_TSE_TRA", uih: "t2_fse_tra"}
VENDOR_NAMES = {siemens: "Siemens", ge: "GE", philips: "Philips", uih: "UIH"}


@pytest.mark.parametrize("junk", JUNK)
@pytest.mark.parametrize("vendor", list(VENDOR_DESCRIPTIONS), ids=lambda v: v.__name__)
def test_junk_numbers_and_empty_iop_are_treated_as_missing_for_every_vendor(vendor, junk):
    f = feats(**{**vendor(SeriesDescription=VENDOR_DESCRIPTIONS[vendor]), **junk})
    assert f.sequence_class == "T2_TSE"
    assert f.evidence["sequenceClass"].startswith("name fallback")
    assert f.manufacturer.value == VENDOR_NAMES[vendor]
    if "ImageOrientationPatient" in junk:
        assert f.orientation.value == "AX" and "no IOP" in f.evidence["standardOrientation"]
