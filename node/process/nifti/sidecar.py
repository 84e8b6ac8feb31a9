"""BIDS-style JSON sidecars and FSL bval/bvec files for the NIfTI volumes, the way dcm2niix writes them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node import __version__

CONVERSION_SOFTWARE = "dicom-node"
CONVERSION_VERSION = __version__

_MANUFACTURERS = (("SIEMENS", "Siemens"), ("GE ", "GE"), ("GE MEDICAL", "GE"), ("PHILIPS", "Philips"),
                  ("TOSHIBA", "Canon"), ("CANON", "Canon"), ("HITACHI", "Hitachi"), ("UIH", "UIH"),
                  ("UNITED IMAGING", "UIH"), ("BRUKER", "Bruker"))

# (BIDS name, DICOM keyword, conversion) for fields copied as they are or scaled ms -> s.
_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("Modality", "Modality", "str"),
    ("MagneticFieldStrength", "MagneticFieldStrength", "num"),
    ("ManufacturersModelName", "ManufacturerModelName", "str"),
    ("InstitutionName", "InstitutionName", "str"),
    ("StationName", "StationName", "str"),
    ("DeviceSerialNumber", "DeviceSerialNumber", "str"),
    ("SoftwareVersions", "SoftwareVersions", "str"),
    ("BodyPartExamined", "BodyPartExamined", "str"),
    ("PatientPosition", "PatientPosition", "str"),
    ("MRAcquisitionType", "MRAcquisitionType", "str"),
    ("SeriesDescription", "SeriesDescription", "str"),
    ("ProtocolName", "ProtocolName", "str"),
    ("ScanningSequence", "ScanningSequence", "multi"),
    ("SequenceVariant", "SequenceVariant", "multi"),
    ("ScanOptions", "ScanOptions", "multi"),
    ("SequenceName", "SequenceName", "str"),
    ("ImageType", "ImageType", "list"),
    ("SeriesNumber", "SeriesNumber", "int"),
    ("AcquisitionNumber", "AcquisitionNumber", "int"),
    ("SliceThickness", "SliceThickness", "num"),
    ("SpacingBetweenSlices", "SpacingBetweenSlices", "num"),
    ("EchoTime", "EchoTime", "ms"),
    ("RepetitionTime", "RepetitionTime", "ms"),
    ("InversionTime", "InversionTime", "ms"),
    ("FlipAngle", "FlipAngle", "num"),
    ("EchoNumber", "EchoNumbers", "int"),
    ("EchoTrainLength", "EchoTrainLength", "int"),
    ("PixelBandwidth", "PixelBandwidth", "num"),
    ("ImagingFrequency", "ImagingFrequency", "num"),
    ("ReceiveCoilName", "ReceiveCoilName", "str"),
    ("KVP", "KVP", "num"),
    ("XRayExposure", "Exposure", "num"),
    ("ConvolutionKernel", "ConvolutionKernel", "multi"),
    ("ReconstructionDiameter", "ReconstructionDiameter", "num"),
    ("GantryDetectorTilt", "GantryDetectorTilt", "num"),
)


def manufacturer(raw: str) -> str:
    """dcm2niix's short vendor name (e.g. "SIEMENS" -> "Siemens"); unknown vendors pass through."""
    upper = raw.upper() + " "
    return next((short for key, short in _MANUFACTURERS if upper.startswith(key)), raw.strip())


def _value(ds: Dataset, keyword: str, kind: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        if kind == "str":
            if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
                # Multi-valued (SoftwareVersions "27\\LX\\..."): joined by backslashes, as dcm2niix writes it.
                return "\\".join(str(v).strip() for v in value)
            return str(value).strip()
        if kind == "multi":
            items = [str(v) for v in value] if not isinstance(value, str) else [value]
            return "_".join(items)
        if kind == "list":
            return [str(v) for v in value] if not isinstance(value, str) else [value]
        if kind == "int":
            return int(float(value if not isinstance(value, list | tuple) else value[0]))
        number = float(value if not hasattr(value, "__len__") or isinstance(value, str) else value[0])
        if kind == "ms":
            return round(number / 1000.0, 9)
        return int(number) if number.is_integer() else number
    except (TypeError, ValueError, IndexError):
        return None


def _dicom_time(raw: str) -> str | None:
    """DICOM TM (HHMMSS.FFFFFF) as BIDS/dcm2niix AcquisitionTime "HH:MM:SS.ffffff"."""
    raw = raw.strip()
    if len(raw) < 6 or not raw[:6].isdigit():
        return None
    frac = raw[7:] if len(raw) > 7 and raw[6] == "." else ""
    return f"{raw[0:2]}:{raw[2:4]}:{raw[4:6]}.{(frac + '000000')[:6]}"


def _phase_encoding(ds: Dataset, out: dict[str, Any]) -> None:
    """PhaseEncodingAxis from InPlanePhaseEncodingDirection (ROW -> i, COL -> j), as dcm2niix writes it when the
    header gives no polarity; the DICOM value is kept beside it."""
    direction = str(ds.get("InPlanePhaseEncodingDirection", "") or "").strip().upper()
    if direction in ("ROW", "COL"):
        out["PhaseEncodingAxis"] = "i" if direction == "ROW" else "j"
        out["InPlanePhaseEncodingDirectionDICOM"] = direction


def _slice_timing(ds: Dataset, n_slices: int | None) -> list[float] | None:
    """Siemens MosaicRefAcqTimes (0019,1029), ms, as SliceTiming in seconds, when it holds one time per slice."""
    creator = ds.get((0x0019, 0x0010))
    elem = ds.get((0x0019, 0x1029))
    if creator is None or elem is None or "SIEMENS MR HEADER" not in str(creator.value).upper():
        return None
    raw = elem.value
    if isinstance(raw, bytes):  # implicit VR / UN: little-endian doubles
        values = [float(v) for v in np.frombuffer(raw[: len(raw) // 8 * 8], dtype="<f8")]
    else:
        values = [float(v) for v in (raw if not isinstance(raw, int | float) else [raw])]
    if not values or (n_slices is not None and len(values) != n_slices):
        return None
    return [round(v / 1000.0, 6) for v in values]


def build_sidecar(ds: Dataset, *, iop: Sequence[float] | None, slice_spacing: float | None,
                  extra: dict[str, Any] | None = None, n_slices: int | None = None) -> dict[str, Any]:
    """BIDS-style fields for one NIfTI from its first image's header (times in seconds, as BIDS wants)."""
    out: dict[str, Any] = {}
    if ds.get("Manufacturer"):
        out["Manufacturer"] = manufacturer(str(ds.Manufacturer))
    for name, keyword, kind in _FIELDS:
        value = _value(ds, keyword, kind)
        if value is not None:
            out[name] = value
    acq = ds.get("AcquisitionTime") or ds.get("ContentTime") or ds.get("SeriesTime")
    if acq:
        t = _dicom_time(str(acq))
        if t:
            out["AcquisitionTime"] = t
    if "SpacingBetweenSlices" not in out and slice_spacing:
        out["SpacingBetweenSlices"] = round(float(slice_spacing), 6)
    _phase_encoding(ds, out)
    timing = _slice_timing(ds, n_slices)
    if timing is not None:
        out["SliceTiming"] = timing
    if iop is not None:
        out["ImageOrientationPatientDICOM"] = [round(float(v), 8) for v in iop]
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "MONOCHROME1":
        out["PhotometricInterpretation"] = photometric
    out["ConversionSoftware"] = CONVERSION_SOFTWARE
    out["ConversionSoftwareVersion"] = CONVERSION_VERSION
    if extra:
        out.update(extra)
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent="\t", ensure_ascii=False) + "\n", encoding="utf-8")


def fsl_bvecs(vectors: Sequence[tuple[float, float, float] | None], ijk_to_lps: np.ndarray,
              affine_ras: np.ndarray) -> np.ndarray:
    """Gradient directions (patient LPS) as FSL bvecs: unit vectors in the voxel frame of the written image.

    ijk_to_lps holds the unit voxel axes (columns) in LPS. FSL expects the x component negated when the
    image is stored in "neurological" order (positive determinant of the RAS affine), as dcm2niix does.
    """
    axes = ijk_to_lps / np.linalg.norm(ijk_to_lps, axis=0)
    out = np.zeros((3, len(vectors)))
    flip_x = float(np.linalg.det(affine_ras[:3, :3])) > 0
    for i, v in enumerate(vectors):
        if v is None:
            continue
        g = np.asarray(v, dtype=float)
        norm = float(np.linalg.norm(g))
        if norm < 1e-6:
            continue
        vox = axes.T @ (g / norm)
        if flip_x:
            vox[0] = -vox[0]
        out[:, i] = vox
    return out


def write_bval_bvec(stem: Path, bvals: Sequence[float], bvecs: np.ndarray) -> tuple[Path, Path]:
    """FSL text files next to the NIfTI: one row of b-values; three rows of vector components."""
    bval_path = stem.with_name(stem.name + ".bval")
    bvec_path = stem.with_name(stem.name + ".bvec")
    bval_path.write_text(" ".join(f"{b:g}" for b in bvals) + "\n", encoding="ascii")
    rows = [" ".join(f"{0.0 if abs(c) < 5e-7 else c:.6g}" for c in row) for row in bvecs]
    bvec_path.write_text("\n".join(rows) + "\n", encoding="ascii")
    return bval_path, bvec_path
