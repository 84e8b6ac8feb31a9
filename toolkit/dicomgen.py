"""Generators for realistic synthetic DICOM studies with correct geometry (no PHI, no downloads)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

# Orientation presets: ImageOrientationPatient (row direction cosine, column direction cosine), in LPS.
ORIENTATIONS: dict[str, tuple[float, float, float, float, float, float]] = {
    "AX": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "SAG": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    "COR": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
}

SOP_CLASS_BY_MODALITY: dict[str, UID] = {"MR": MRImageStorage, "CT": CTImageStorage}

PixelFn = Callable[[int, int, int], np.ndarray]


def new_uid() -> str:
    """A fresh, valid UID (pydicom's random 2.25 style root)."""
    return str(generate_uid())


def oblique_iop(angle_deg: float, axis: str = "x") -> tuple[float, float, float, float, float, float]:
    """An axial orientation rotated by angle_deg around the given patient axis."""
    a = np.deg2rad(angle_deg)
    c, s = float(np.cos(a)), float(np.sin(a))
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, 1.0, 0.0])
    if axis == "x":
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    elif axis == "y":
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    else:
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    r, k = rot @ row, rot @ col
    return (float(r[0]), float(r[1]), float(r[2]), float(k[0]), float(k[1]), float(k[2]))


def default_pixels(rows: int, cols: int, index: int) -> np.ndarray:
    """A slice whose values encode row, column and slice index, so flips and reorders are visible."""
    r = np.arange(rows, dtype=np.int32)[:, None]
    c = np.arange(cols, dtype=np.int32)[None, :]
    return ((r * 7 + c * 3 + index * 101) % 4000).astype(np.uint16)


@dataclass
class SeriesSpec:
    """What one generated series looks like; every field has a realistic default."""

    modality: str = "MR"
    n_slices: int = 8
    rows: int = 32
    cols: int = 32
    orientation: str | Sequence[float] = "AX"
    pixel_spacing: tuple[float, float] = (0.9, 0.8)
    slice_spacing: float = 3.0
    slice_thickness: float | None = None
    origin: tuple[float, float, float] = (-100.0, -120.0, -40.0)
    patient_position: str = "HFS"
    series_number: int = 1
    series_description: str = "t1_tse_tra"
    protocol_name: str | None = None
    shuffle_instance_numbers: bool = False
    rescale: tuple[float, float] | None = None  # (slope, intercept); CT default is (1, -1024)
    pixel_fn: PixelFn | None = None
    series_time: str = "101500"
    extra: dict[str, Any] = field(default_factory=dict)  # keyword -> value, applied to every slice
    series_uid: str = field(default_factory=new_uid)


@dataclass
class StudySpec:
    """Identifying attributes of one study (synthetic, never real PHI)."""

    patient_id: str = "SYN0001"
    patient_name: str = "SYNTHETIC^PATIENT"
    study_date: str = "20250115"
    study_time: str = "101010"
    accession: str = "ACC0001"
    study_description: str = "Synthetic study"
    study_uid: str = field(default_factory=new_uid)
    series: list[SeriesSpec] = field(default_factory=lambda: [SeriesSpec()])


def _iop(spec: SeriesSpec) -> tuple[float, ...]:
    if isinstance(spec.orientation, str):
        return ORIENTATIONS[spec.orientation]
    return tuple(float(v) for v in spec.orientation)


def slice_positions(spec: SeriesSpec) -> list[tuple[float, float, float]]:
    """IPP of each slice along the slice normal (row x column), starting at the origin."""
    iop = np.array(_iop(spec))
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array(spec.origin)
    out: list[tuple[float, float, float]] = []
    for k in range(spec.n_slices):
        x, y, z = (float(v) for v in origin + normal * spec.slice_spacing * k)
        out.append((x, y, z))
    return out


def make_series(study: StudySpec, spec: SeriesSpec) -> list[Dataset]:
    """Build the datasets of one series, in spatial order (instance numbers possibly shuffled)."""
    numbers = list(range(1, spec.n_slices + 1))
    if spec.shuffle_instance_numbers:
        random.Random(spec.series_number).shuffle(numbers)
    pixel_fn = spec.pixel_fn or (lambda r, c, k: default_pixels(r, c, k))
    rescale = spec.rescale if spec.rescale is not None else ((1.0, -1024.0) if spec.modality == "CT" else None)
    out = []
    for k, ipp in enumerate(slice_positions(spec)):
        ds = _base_dataset(study, spec)
        ds.SOPInstanceUID = new_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [round(v, 6) for v in ipp]
        ds.SliceLocation = round(float(np.dot(ipp, np.cross(_iop(spec)[:3], _iop(spec)[3:]))), 6)
        pixels = pixel_fn(spec.rows, spec.cols, k)
        _set_pixels(ds, pixels)
        if rescale is not None:
            ds.RescaleSlope = rescale[0]
            ds.RescaleIntercept = rescale[1]
        for key, value in spec.extra.items():
            setattr(ds, key, value(k) if callable(value) else value)
        out.append(ds)
    return out


def _base_dataset(study: StudySpec, spec: SeriesSpec) -> Dataset:
    sop_class = SOP_CLASS_BY_MODALITY.get(spec.modality, MRImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.Modality = spec.modality
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession
    ds.StudyDescription = study.study_description
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = spec.series_uid
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = spec.series_description
    ds.ProtocolName = spec.protocol_name or spec.series_description
    ds.SeriesDate = study.study_date
    ds.SeriesTime = spec.series_time
    ds.AcquisitionTime = spec.series_time
    ds.ContentDate = study.study_date
    ds.FrameOfReferenceUID = study.study_uid + ".1" if len(study.study_uid) < 60 else study.study_uid
    ds.PatientPosition = spec.patient_position
    ds.ImageOrientationPatient = list(_iop(spec))
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.SliceThickness = spec.slice_thickness if spec.slice_thickness is not None else spec.slice_spacing
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"] if spec.modality == "MR" else ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "SIEMENS" if spec.modality == "MR" else "GE MEDICAL SYSTEMS"
    ds.ManufacturerModelName = "Skyra" if spec.modality == "MR" else "Revolution"
    if spec.modality == "MR":
        ds.MagneticFieldStrength = 3.0
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 600.0
        ds.EchoTime = 12.0
        ds.FlipAngle = 90.0
        ds.EchoTrainLength = 3
        ds.EchoNumbers = 1
    else:
        ds.KVP = 120.0
        ds.ConvolutionKernel = "STANDARD"
    ds.BodyPartExamined = "HEAD" if spec.modality == "MR" else "CHEST"
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if pixels.dtype != np.uint16 or int(pixels.max(initial=0)) > 4095 else 12
    ds.HighBit = ds.BitsStored - 1
    signed = pixels.dtype.kind == "i"
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()


def make_study(study: StudySpec) -> list[Dataset]:
    """All datasets of a study, series after series."""
    return [ds for spec in study.series for ds in make_series(study, spec)]


def write_datasets(datasets: Iterable[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as a Part 10 file named after its SOP Instance UID; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study(study: StudySpec, folder: Path) -> list[Path]:
    """Generate and write a whole study into folder (flat)."""
    return write_datasets(make_study(study), folder)


def multi_series_study(n_series: int = 3, n_slices: int = 10, modality: str = "MR", **study_kw: Any) -> StudySpec:
    """A typical small multi-series study: different orientations and descriptions per series."""
    names = ["t1_tse_tra", "t2_tse_sag", "t2_tirm_cor", "ep2d_diff_tra", "t1_vibe_fs_tra"]
    orients = ["AX", "SAG", "COR", "AX", "AX"]
    series = [
        SeriesSpec(
            modality=modality,
            n_slices=n_slices,
            series_number=i + 1,
            series_description=names[i % len(names)],
            orientation=orients[i % len(orients)],
            series_time=f"10{15 + i:02d}00",
        )
        for i in range(n_series)
    ]
    return StudySpec(series=series, **study_kw)


def make_multivolume_series(study: StudySpec, spec: SeriesSpec, volumes: Sequence[dict[str, Any]]) -> list[Dataset]:
    """One series holding several volumes at the same positions (echoes, 4D time points, DWI directions).

    Each entry of volumes is keyword -> value (or callable(slice_index)) applied to that volume's slices on
    top of spec.extra; InstanceNumber runs through the volumes in order and pixel values differ per volume.
    """
    out: list[Dataset] = []
    base_fn = spec.pixel_fn or (lambda r, c, k: default_pixels(r, c, k))
    for v, extra in enumerate(volumes):
        vspec = SeriesSpec(**{**spec.__dict__, "extra": {**spec.extra, **extra}, "shuffle_instance_numbers": False})
        vspec.pixel_fn = lambda r, c, k, v=v: ((base_fn(r, c, k).astype(np.int32) + 37 * v) % 4000).astype(np.uint16)
        for ds in make_series(study, vspec):
            ds.InstanceNumber = int(ds.InstanceNumber) + v * spec.n_slices
            out.append(ds)
    if spec.shuffle_instance_numbers:
        numbers = [int(ds.InstanceNumber) for ds in out]
        random.Random(spec.series_number).shuffle(numbers)
        for ds, n in zip(out, numbers, strict=True):
            ds.InstanceNumber = n
    return out


def siemens_csa(fields: dict[str, Sequence[str]]) -> bytes:
    """A Siemens CSA2 ("SV10") header blob holding the given tag names and string values."""
    import struct

    out = bytearray(b"SV10\x04\x03\x02\x01" + struct.pack("<II", len(fields), 77))
    for name, values in fields.items():
        out += struct.pack("<64si4s3i", name.encode("ascii"), len(values), b"DS\0\0", 3, len(values), 77)
        for value in values:
            data = value.encode("ascii") + b"\0"
            out += struct.pack("<4i", len(data), len(data), 77, len(data)) + data + b"\0" * (-len(data) % 4)
    return bytes(out)


def make_mosaic_series(study: StudySpec, spec: SeriesSpec, n_volumes: int = 1,
                       reverse_slices: bool = False) -> list[Dataset]:
    """A Siemens-style mosaic series: each file tiles spec.n_slices slices of spec.rows x spec.cols.

    The tiles follow the slice normal (or its opposite with reverse_slices, as the CSA SliceNormalVector
    then says); one file per volume (fMRI-like when n_volumes > 1); pixel values differ per tile and volume.
    """
    import math

    iop = np.array(_iop(spec))
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col) * (-1.0 if reverse_slices else 1.0)
    side = math.ceil(math.sqrt(spec.n_slices))
    dy, dx = spec.pixel_spacing
    first = np.array(spec.origin)
    corner = first - row * dx * (side - 1) * spec.cols / 2 - col * dy * (side - 1) * spec.rows / 2
    base_fn = spec.pixel_fn or (lambda r, c, k: default_pixels(r, c, k))
    csa = siemens_csa({"NumberOfImagesInMosaic": [str(spec.n_slices)],
                       "SliceNormalVector": [f"{v:.8f}" for v in normal]})
    out = []
    for t in range(n_volumes):
        mosaic = np.zeros((side * spec.rows, side * spec.cols), dtype=np.uint16)
        for k in range(spec.n_slices):
            r0, c0 = (k // side) * spec.rows, (k % side) * spec.cols
            tile = (base_fn(spec.rows, spec.cols, k).astype(np.int32) + 37 * t) % 4000
            mosaic[r0:r0 + spec.rows, c0:c0 + spec.cols] = tile
        ds = _base_dataset(study, spec)
        ds.SOPInstanceUID = new_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = t + 1
        ds.AcquisitionNumber = t + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.Manufacturer = "SIEMENS"
        ds.ImagePositionPatient = [round(float(v), 6) for v in corner]
        ds.SpacingBetweenSlices = spec.slice_spacing
        ds.AcquisitionMatrix = [spec.cols, 0, 0, spec.rows]
        ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
        ds.add_new((0x0019, 0x100A), "US", spec.n_slices)
        ds.add_new((0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")
        ds.add_new((0x0029, 0x1010), "OB", csa)
        _set_pixels(ds, mosaic)
        for key, value in spec.extra.items():
            setattr(ds, key, value(t) if callable(value) else value)
        out.append(ds)
    return out


def make_enhanced_mr(study: StudySpec, spec: SeriesSpec, frames: Sequence[dict[str, Any]],
                     shared: dict[str, Any] | None = None, philips_private_offset: float | None = None) -> Dataset:
    """One Enhanced MR Image (multi-frame) as the standard lays it out: geometry, timing and frame type in the
    shared and per-frame functional groups, nothing per frame at the top level.

    frames: one dict per frame with "slice" (index into the spec's positions), and optionally "echo_time" (ms),
    "frame_type" (four values), "temporal" (TemporalPositionIndex). shared: RepetitionTime/FlipAngle
    (MRTimingAndRelatedParametersSequence). philips_private_offset: also write a Philips private per-frame
    sequence (2005,140F) whose ImagePositionPatient is off by that many mm, as some Philips files do."""
    from pydicom.sequence import Sequence as Seq

    def item(**attrs: Any) -> Dataset:
        out = Dataset()
        for key, value in attrs.items():
            setattr(out, key, value)
        return out

    positions = slice_positions(spec)
    ds = _base_dataset(study, spec)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4.1")
    ds.SOPInstanceUID = new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    ds.InstanceNumber = 1
    for keyword in ("ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RepetitionTime", "EchoTime",
                    "FlipAngle", "EchoNumbers", "ImageType"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = len(frames)
    timing = shared or {"RepetitionTime": 1230.0, "FlipAngle": 70.0}
    ds.SharedFunctionalGroupsSequence = Seq([item(
        MRTimingAndRelatedParametersSequence=Seq([item(**timing)]),
        PixelMeasuresSequence=Seq([item(PixelSpacing=list(spec.pixel_spacing), SliceThickness=spec.slice_spacing,
                                        SpacingBetweenSlices=spec.slice_spacing)]),
        PlaneOrientationSequence=Seq([item(ImageOrientationPatient=list(_iop(spec)))]),
        PixelValueTransformationSequence=Seq([item(RescaleIntercept=0.0, RescaleSlope=1.0, RescaleType="US")]),
    )])
    third = "echo" if any("echo_time" in f for f in frames) else "temporal"
    organization = new_uid()
    ds.DimensionOrganizationSequence = Seq([item(DimensionOrganizationUID=organization)])
    ds.DimensionIndexSequence = Seq([
        item(DimensionOrganizationUID=organization, DimensionIndexPointer=0x00209056,
             FunctionalGroupPointer=0x00209111),
        item(DimensionOrganizationUID=organization, DimensionIndexPointer=0x00209057,
             FunctionalGroupPointer=0x00209111),
        item(DimensionOrganizationUID=organization,
             DimensionIndexPointer=0x00189082 if third == "echo" else 0x00209128,
             FunctionalGroupPointer=0x00189114 if third == "echo" else 0x00209111),
    ])
    echoes = sorted({float(f.get("echo_time", 12.0)) for f in frames})
    per_frame = []
    pixels = []
    for n, frame in enumerate(frames):
        k = int(frame["slice"])
        ipp = [round(v, 6) for v in positions[k]]
        groups = item(
            FrameContentSequence=Seq([item(StackID="1", InStackPositionNumber=k + 1,
                                           TemporalPositionIndex=int(frame.get("temporal", 1)),
                                           DimensionIndexValues=[1, k + 1, int(frame.get("temporal", 1)) if third
                                                                 == "temporal" else echoes.index(
                                                                     float(frame.get("echo_time", 12.0))) + 1])]),
            PlanePositionSequence=Seq([item(ImagePositionPatient=ipp)]),
            MREchoSequence=Seq([item(EffectiveEchoTime=float(frame.get("echo_time", 12.0)))]),
            MRImageFrameTypeSequence=Seq([item(FrameType=list(frame.get("frame_type",
                                                                       ["ORIGINAL", "PRIMARY", "M", "NONE"])))]),
        )
        if philips_private_offset is not None:
            private = item(ImagePositionPatient=[round(ipp[0] + philips_private_offset, 6), ipp[1], ipp[2]])
            groups.private_block(0x2005, "Philips Imaging DD 001", create=True).add_new(0x0F, "SQ", Seq([private]))
        per_frame.append(groups)
        pixels.append((default_pixels(spec.rows, spec.cols, k).astype(np.int32) + 53 * n) % 4000)
    ds.PerFrameFunctionalGroupsSequence = Seq(per_frame)
    stack = np.stack(pixels).astype(np.uint16)
    _set_pixels(ds, stack[0])
    ds.PixelData = stack.tobytes()
    return ds
