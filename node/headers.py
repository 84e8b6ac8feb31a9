"""Fast reader for the few header values volume building needs, from plain little-endian Part 10 files.

pydicom stays the reference: anything this reader does not fully understand (other transfer syntaxes,
multi-frame, vendor private diffusion tags, malformed lengths) returns None and the caller uses pydicom.
"""

from __future__ import annotations

import struct
from pathlib import Path

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
PIXEL_DATA = 0x7FE00010
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_HEAD_BYTES = 32768

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
}
# Elements whose presence means "let pydicom handle this file" (Siemens private diffusion values).
_FALLBACK = frozenset({0x0019100C, 0x0019100E})


_EXPLICIT_HEADER = struct.Struct("<HH2sH")
_IMPLICIT_HEADER = struct.Struct("<HHI")
_U32 = struct.Struct("<I")


class _Unsupported(Exception):
    """This file needs pydicom."""


def read_fast(path: Path) -> dict[str, object] | None:
    """Values of WANTED keywords plus "_pixel_offset", "_pixel_length", "_transfer_syntax"; None -> use pydicom."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
            out = _parse(head)
            if out is None:
                # Header longer than the first chunk (large private blocks): read the rest once.
                head += fh.read()
                out = _parse(head)
            return out
    except (_Unsupported, struct.error, UnicodeDecodeError, ValueError, IndexError):
        return None


def _parse(buf: bytes) -> dict[str, object] | None:
    if len(buf) < 144 or buf[128:132] != b"DICM":
        raise _Unsupported
    pos = 132
    syntax = ""
    end_meta = None
    while True:
        group, elem, vr = *struct.unpack_from("<HH", buf, pos), buf[pos + 4:pos + 6]
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", buf, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", buf, pos + 6)[0]
            start = pos + 8
        if elem == 0x0000:
            end_meta = start + 4 + struct.unpack_from("<I", buf, start)[0]
        if elem == 0x0010:
            syntax = buf[start:start + length].decode("ascii").strip("\0 ")
        pos = start + length
        if end_meta is not None and pos >= end_meta:
            break
    if syntax not in (EXPLICIT_LE, IMPLICIT_LE):
        raise _Unsupported
    explicit = syntax == EXPLICIT_LE
    out: dict[str, object] = {"_transfer_syntax": syntax}
    n = len(buf)
    while True:
        if pos + 8 > n:
            return None  # header continues past what was read
        # The hot loop of NIfTI conversion (thousands of files per series): one unpack per element header.
        if explicit:
            group, elem, vr, length = _EXPLICIT_HEADER.unpack_from(buf, pos)
            start = pos + 8
            if vr in _LONG_VRS:
                if pos + 12 > n:
                    return None
                length = _U32.unpack_from(buf, start)[0]
                start = pos + 12
        else:
            group, elem, length = _IMPLICIT_HEADER.unpack_from(buf, pos)
            start = pos + 8
        tag = group << 16 | elem
        if tag == PIXEL_DATA:
            if length == _UNDEFINED:
                raise _Unsupported  # encapsulated pixel data: pydicom decodes it
            out["_pixel_offset"] = start
            out["_pixel_length"] = length
            return out
        if tag in _FALLBACK:
            raise _Unsupported
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, start, explicit)
            if pos < 0:
                return None
            continue
        if start + length > n:
            return None
        wanted = WANTED.get(tag)
        if wanted is not None:
            out[wanted[0]] = _decode(buf[start:start + length], wanted[1])
        pos = start + length


def _length_and_start(buf: bytes, pos: int, explicit: bool) -> tuple[int, int] | None:
    """(value length, value offset) of the element header at pos; None when the header runs past the buffer."""
    if explicit:
        vr = buf[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                return None
            return struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
        return struct.unpack_from("<H", buf, pos + 6)[0], pos + 8
    return struct.unpack_from("<I", buf, pos + 4)[0], pos + 8


def _skip_undefined(buf: bytes, pos: int, explicit: bool) -> int:
    """Position after an undefined-length sequence (or item); -1 when the buffer ends first."""
    n = len(buf)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | elem
        if tag == _SEQ_END:
            return pos + 8
        if tag == _ITEM:
            length = struct.unpack_from("<I", buf, pos + 4)[0]
            if length == _UNDEFINED:
                pos = _skip_item(buf, pos + 8, explicit)
                if pos < 0:
                    return -1
            else:
                pos += 8 + length
            continue
        raise _Unsupported
    return -1


def _skip_item(buf: bytes, pos: int, explicit: bool) -> int:
    """Position after an undefined-length item's delimiter."""
    n = len(buf)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | elem
        if tag == _ITEM_END:
            return pos + 8
        found = _length_and_start(buf, pos, explicit)
        if found is None:
            return -1
        length, start = found
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, start, explicit)
            if pos < 0:
                return -1
        else:
            pos = start + length
    return -1


def _decode(raw: bytes, kind: str) -> object:
    if kind == "US":
        return struct.unpack_from("<H", raw, 0)[0] if len(raw) >= 2 else None
    if kind == "FD":
        count = len(raw) // 8
        values = struct.unpack_from(f"<{count}d", raw, 0)
        return values[0] if count == 1 else list(values)
    text = raw.decode("latin-1").strip("\0 ")
    parts = [p.strip() for p in text.split("\\")]
    return parts[0] if len(parts) == 1 else parts
