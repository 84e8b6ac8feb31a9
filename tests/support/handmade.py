"""Hand-made DICOM files for reader tests: a dataset saved as Part 10, an enhanced multi-frame MR header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid


def part10(ds: Dataset, sop_class: UID, folder: Path, name: str) -> Path:
    """Save a hand-made dataset as a Part 10 file."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = sop_class
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def enhanced_mr(folder: Path, undefined_lengths: bool) -> Path:
    """An enhanced (multi-frame) MR header: acquisition parameters live in functional group sequences."""
    def item(**attrs: Any) -> Dataset:
        ds = Dataset()
        for key, value in attrs.items():
            setattr(ds, key, value)
        return ds

    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.NumberOfFrames = "MR", 5, 1, 3
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.RFEchoTrainLength = 1
    ds.SharedFunctionalGroupsSequence = Sequence([item(
        MRTimingAndRelatedParametersSequence=Sequence([item(RepetitionTime=5.2, FlipAngle=12.0)]),
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.5, 0.5], SliceThickness=1.0)]),
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
    )])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        item(MREchoSequence=Sequence([item(EffectiveEchoTime=te)]),
             PlanePositionSequence=Sequence([item(ImagePositionPatient=[0, 0, k])]))
        for k, te in enumerate([2.1, 2.1, 4.5])
    ])
    if undefined_lengths:
        for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            ds[keyword].is_undefined_length = True
            for frame in ds[keyword].value:
                frame.is_undefined_length_sequence_item = True
    return part10(ds, UID("1.2.840.10008.5.1.4.1.1.4.1"), folder, f"enhanced_{undefined_lengths}.dcm")
