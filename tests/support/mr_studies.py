"""Realistic MR studies for MR_clean tests: protocols built as DICOM datasets, and the frame the workbook gives MR_clean."""

from __future__ import annotations

from typing import Any

import pandas as pd

from toolkit.dicomgen import SeriesSpec, StudySpec, make_study

COLUMNS = [
    "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ProtocolName", "SequenceName",
    "ImageType", "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
    "EchoTime", "InversionTime", "FlipAngle", "EchoTrainLength", "EchoNumbers", "MagneticFieldStrength",
    "Manufacturer", "ManufacturerModelName", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness",
    "SeriesDate", "SeriesTime", "AcquisitionTime", "ContentTime", "ContrastBolusAgent", "DiffusionBValue",
    "BodyPartExamined", "Modality", "InstanceNumber",
]


def frame(study: StudySpec) -> pd.DataFrame:
    """One row per instance with the raw pydicom values (MultiValue, DSfloat, IS...), as the workbook has them."""
    return pd.DataFrame([{k: ds.get(k) for k in COLUMNS} for ds in make_study(study)])


def series(n: int, desc: str, time: str, orientation: str = "AX", **extra: Any) -> SeriesSpec:
    return SeriesSpec(series_number=n, series_description=desc, series_time=time, orientation=orientation,
                      n_slices=extra.pop("n_slices", 4), extra=extra)


GRE_3D: dict[str, Any] = {"ScanningSequence": "GR", "SequenceVariant": "SP", "MRAcquisitionType": "3D", "RepetitionTime": 4.5,
          "EchoTime": 1.7, "FlipAngle": 10, "EchoTrainLength": 1}


LOCALIZER: dict[str, Any] = {"ScanningSequence": "GR", "SequenceVariant": "SP", "RepetitionTime": 8.6, "EchoTime": 4,
             "FlipAngle": 20, "n_slices": 3}


def breast_dce() -> StudySpec:
    """Siemens 3T breast: localizer, T2, STIR, DWI + ADC, pre + 5 post fat-sat VIBE, subtraction, sagittal post."""
    dyn: dict[str, Any] = {**GRE_3D, "SliceThickness": 1.5}
    specs = [
        series(1, "localizer", "090000", **LOCALIZER),
        series(2, "t2_tse_tra", "090200", ScanningSequence="SE", RepetitionTime=4500, EchoTime=90, EchoTrainLength=17),
        series(3, "t2_tirm_tra", "090500", ScanningSequence="SE\\IR", RepetitionTime=5000, EchoTime=60,
               InversionTime=230, EchoTrainLength=13),
        series(4, "ep2d_diff_tra_b50_800", "090800", ScanningSequence="EP", SequenceVariant="SK\\SP",
               RepetitionTime=5600, EchoTime=62, DiffusionBValue=lambda k: 50 if k % 2 == 0 else 800),
        series(5, "ep2d_diff_tra_b50_800_ADC", "090801", ScanningSequence="EP",
               ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]),
    ]
    specs += [series(6 + i, "t1_vibe_fs_tra_dyn", f"091{i}30", **dyn) for i in range(6)]
    specs += [
        series(12, "t1_vibe_fs_tra_dyn_SUB", "091700", ImageType=["DERIVED", "PRIMARY", "SUBTRACT"], **dyn),
        series(13, "t1_vibe_fs_sag", "091900", orientation="SAG", **GRE_3D),
    ]
    return StudySpec(series=specs, study_description="MR breast DCE")
