"""The header values volume building needs, decoded from one walk of node.dicom.reader (uncompressed LE files).

pydicom stays the reference: anything this reader does not fully understand (other transfer syntaxes,
encapsulated pixel data, malformed lengths) returns None and the caller uses pydicom.
"""

from __future__ import annotations

import struct
from pathlib import Path

from node.dicom import reader

EXPLICIT_LE = reader.EXPLICIT_VR_LE
IMPLICIT_LE = reader.IMPLICIT_VR_LE
PIXEL_DATA = reader.PIXEL_DATA

# tag -> (keyword, kind): kind is "str" (text, backslash-separated), "US", "FD" (binary numbers).
WANTED: dict[int, tuple[str, str]] = {
    0x00080008: ("ImageType", "str"),
    0x00080018: ("SOPInstanceUID", "str"),
    0x00080060: ("Modality", "str"),
    0x00080070: ("Manufacturer", "str"),
    0x00180080: ("RepetitionTime", "str"),
    0x00180081: ("EchoTime", "str"),
    0x00180086: ("EchoNumbers", "str"),
    0x00180088: ("SpacingBetweenSlices", "str"),
    0x00180050: ("SliceThickness", "str"),
    0x00181030: ("ProtocolName", "str"),
    0x00181060: ("TriggerTime", "str"),
    0x00181120: ("GantryDetectorTilt", "str"),
    0x00181164: ("ImagerPixelSpacing", "str"),
    0x00181250: ("ReceiveCoilName", "str"),
    0x00181314: ("FlipAngle", "str"),
    0x00189087: ("DiffusionBValue", "FD"),
    0x00189089: ("DiffusionGradientOrientation", "FD"),
    0x0020000E: ("SeriesInstanceUID", "str"),
    0x00200012: ("AcquisitionNumber", "str"),
    0x00200013: ("InstanceNumber", "str"),
    0x00200032: ("ImagePositionPatient", "str"),
    0x00200037: ("ImageOrientationPatient", "str"),
    0x00200100: ("TemporalPositionIdentifier", "str"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "str"),
    0x00280008: ("NumberOfFrames", "str"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "str"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "str"),
    0x00281053: ("RescaleSlope", "str"),
    0x0051100F: ("SiemensCoil", "str"),  # Siemens' coil element in the CSA era, used by the split on coil
    # Siemens CSA-era diffusion (private block 10 of group 0019, "SIEMENS MR HEADER"): B_value as text,
    # DiffusionGradientDirection as three little-endian doubles whether the file is explicit (FD) or implicit.
    0x0019100C: ("SiemensBValue", "str"),
    0x0019100E: ("SiemensGradient", "FD"),
    0x00190010: ("SiemensCreator0019", "str"),
    # Siemens mosaics: the tile count (0019,100A) and the CSA image header (0029,1010) with the slice normal.
    0x0019100A: ("SiemensMosaicCount", "US"),
    0x00290010: ("SiemensCreator0029", "str"),
    0x00291010: ("SiemensCSAImageHeader", "raw"),
    # GE diffusion: b-value first of (0043,1039) (IS, may carry a 1e9 offset); gradient per axis (0019,10BB/BC/BD).
    0x00431039: ("GEBValue", "str"),
    0x001910BB: ("GEGradientX", "str"),
    0x001910BC: ("GEGradientY", "str"),
    0x001910BD: ("GEGradientZ", "str"),
    0x00181312: ("InPlanePhaseEncodingDirection", "str"),
    # GE reverse-polarity EPI: the pulse sequence name (0019,109C) and user data 12 (0019,10B3).
    0x0019109C: ("GEPulseSequenceName", "str"),
    0x001910B3: ("GEUserData12", "str"),
    # GE "image type" (0043,102F) in "GEMS_PARM_01": 0 magnitude, 1 phase, 2 real, 3 imaginary (field maps).
    0x00430010: ("GECreator0043", "str"),
    0x0043102F: ("GEImageKind", "SS"),
    0x0043107C: ("GEGroupDelay", "FL"),  # seconds added to TR between volumes (epiRT group delay)
    # Philips private scale slope (2005,100E) "MRScaleSlope" in block 10 of "Philips MR Imaging DD 001" (FL).
    0x20050010: ("PhilipsCreator2005", "str"),
    0x2005100E: ("PhilipsScaleSlope", "FL"),
}
# Enhanced multi-frame images: what a frame's functional groups (per-frame, then shared) may say of it. Read
# flattened from the standard macros (node.dicom.reader.sequence_items); kinds as in WANTED, "UL" for 32-bit.
FRAME_WANTED: dict[int, tuple[str, str]] = {
    0x00089007: ("FrameType", "str"),
    0x00180080: ("RepetitionTime", "str"),
    0x00180086: ("EchoNumbers", "str"),
    0x00181060: ("TriggerTime", "str"),
    0x00181314: ("FlipAngle", "str"),
    0x00189082: ("EffectiveEchoTime", "FD"),
    0x00189087: ("DiffusionBValue", "FD"),
    0x00189089: ("DiffusionGradientOrientation", "FD"),
    0x00200032: ("ImagePositionPatient", "str"),
    0x00200037: ("ImageOrientationPatient", "str"),
    0x00200100: ("TemporalPositionIdentifier", "str"),
    0x00209128: ("TemporalPositionIndex", "UL"),
    0x00280030: ("PixelSpacing", "str"),
    0x00180050: ("SliceThickness", "str"),
    0x00180088: ("SpacingBetweenSlices", "str"),
    0x00281052: ("RescaleIntercept", "str"),
    0x00281053: ("RescaleSlope", "str"),
}
SHARED_GROUPS = 0x52009229
PER_FRAME_GROUPS = 0x52009230
PHILIPS_MR_IMAGING = "Philips MR Imaging DD 001"
SIEMENS_MR_HEADER = "SIEMENS MR HEADER"


_READ = frozenset(WANTED) | {SHARED_GROUPS, PER_FRAME_GROUPS}
_FRAME_READ = frozenset(FRAME_WANTED)


def read_fast(path: Path) -> dict[str, object] | None:
    """Values of WANTED keywords plus "_pixel_offset", "_pixel_length", "_transfer_syntax"; None -> use pydicom.

    An explicit VR multi-frame image also gets "_shared" (one dict) and "_frames" (one dict per frame): the
    FRAME_WANTED values of its functional groups."""
    try:
        read = reader.read_header(path, lambda meta: meta.transfer_syntax in (EXPLICIT_LE, IMPLICIT_LE), wanted=_READ)
        if read is None:
            return None
        meta, found, buf = read
        pixel = found.pixel
        if found.truncated or pixel is None or pixel.tag != PIXEL_DATA or pixel.length == reader.UNDEFINED:
            return None  # no pixel data, or encapsulated pixel data: pydicom decodes it
        out: dict[str, object] = {
            "_transfer_syntax": meta.transfer_syntax, "_pixel_offset": pixel.offset, "_pixel_length": pixel.length,
        }
        for element in found.elements.values():
            tag, _vr, offset, length, _end = element
            if tag in (SHARED_GROUPS, PER_FRAME_GROUPS):
                if meta.transfer_syntax == EXPLICIT_LE:
                    items = reader.sequence_items(buf, element, _FRAME_READ)
                    groups = [_values(buf, item, FRAME_WANTED) for item in items]
                    if tag == PER_FRAME_GROUPS:
                        out["_frames"] = groups
                    elif groups:
                        out["_shared"] = groups[0]
                continue
            keyword, kind = WANTED[tag]
            out[keyword] = _decode(buf[offset : offset + length], kind)
        return out
    except (OSError, struct.error, UnicodeDecodeError, ValueError, IndexError):  # ReadError is a ValueError
        return None


def _values(buf: bytes, elements: dict[int, reader.Element], table: dict[int, tuple[str, str]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for tag, _vr, offset, length, _end in elements.values():
        keyword, kind = table[tag]
        out[keyword] = _decode(buf[offset : offset + length], kind)
    return out


def _decode(raw: bytes, kind: str) -> object:
    if kind == "raw":
        return bytes(raw)
    if kind == "US":
        return struct.unpack_from("<H", raw, 0)[0] if len(raw) >= 2 else None
    if kind == "UL":
        return struct.unpack_from("<I", raw, 0)[0] if len(raw) >= 4 else None
    if kind == "SS":
        return struct.unpack_from("<h", raw, 0)[0] if len(raw) >= 2 else None
    if kind == "FL":
        return struct.unpack_from("<f", raw, 0)[0] if len(raw) >= 4 else None
    if kind == "FD":
        count = len(raw) // 8
        values = struct.unpack_from(f"<{count}d", raw, 0)
        return values[0] if count == 1 else list(values)
    text = raw.decode("latin-1").strip("\0 ")
    parts = [p.strip() for p in text.split("\\")]
    return parts[0] if len(parts) == 1 else parts
