"""A fast, allocation-light walk over a received dataset: key attribute values and a truncation check in one pass.

The C-STORE path needs a handful of identifying values and proof that every element fits in the file;
pydicom's full reader costs milliseconds per instance for that. This walker reads only element headers
(nested sequences and encapsulated pixel data are skipped item by item) and decodes only the wanted tags.
It is deliberately as lenient as pydicom where real senders deviate (an implicit dataset labelled explicit,
UN elements holding implicit sequences) and strict where hostile input could make a walk expensive: tags must
ascend (a few deviations are tolerated), so megabytes of zeros fail in microseconds, not minutes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
UNDEFINED = 0xFFFFFFFF

# Tags (group << 16 | element) we extract, by keyword.
WANTED: dict[int, str] = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00100020: "PatientID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
}
_LAST_WANTED = max(WANTED)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_MAX_DEPTH = 32

_MAX_DISORDER = 64  # out-of-order tags tolerated per dataset before it is called malformed
_STRUCTS = {
    True: (struct.Struct("<HH"), struct.Struct("<I"), struct.Struct("<H")),
    False: (struct.Struct(">HH"), struct.Struct(">I"), struct.Struct(">H")),
}


class ScanError(ValueError):
    """The byte stream is not a well-formed little-endian dataset."""


@dataclass
class ScanResult:
    values: dict[str, str] = field(default_factory=dict)
    truncated: str | None = None


class _Walker:
    def __init__(self, data: bytes | memoryview, implicit: bool, little: bool = True) -> None:
        self.data = memoryview(data)
        self.size = len(data)
        self.implicit = implicit
        self.little = little
        self._tag, self._u32, self._u16 = _STRUCTS[little]
        self.disorder = 0
        self.un_sequence = False  # the element just read is UN with undefined length (implicit content)

    def header(self, pos: int) -> tuple[int, int, int, bool]:
        """Return (tag, value offset, length, is_sequence_like) of the element at pos."""
        if pos + 8 > self.size:
            raise ScanError(f"element header at offset {pos} runs past the end ({self.size} bytes)")
        group, elem = self._tag.unpack_from(self.data, pos)
        tag = group << 16 | elem
        self.un_sequence = False
        if group == 0xFFFE:  # item / delimiters have no VR
            return tag, pos + 8, self._u32.unpack_from(self.data, pos + 4)[0], False
        if self.implicit:
            length = self._u32.unpack_from(self.data, pos + 4)[0]
            return tag, pos + 8, length, length == UNDEFINED
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > self.size:
                raise ScanError(f"element header at offset {pos} runs past the end")
            length = self._u32.unpack_from(self.data, pos + 8)[0]
            self.un_sequence = vr == b"UN" and length == UNDEFINED
            return tag, pos + 12, length, vr == b"SQ" or length == UNDEFINED
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise ScanError(f"invalid VR {vr!r} at offset {pos}")
        return tag, pos + 8, self._u16.unpack_from(self.data, pos + 6)[0], False

    def skip_undefined(self, pos: int, depth: int) -> int:
        """Skip the items of an undefined-length sequence (or encapsulated pixel data) starting at pos."""
        if depth > _MAX_DEPTH:
            raise ScanError("sequences nested too deep")
        if self.un_sequence:
            # PS3.5 6.2.2: a UN element of undefined length holds an implicit little endian sequence.
            saved = (self.implicit, self.little, self._tag, self._u32, self._u16)
            self.implicit, self.little = True, True
            self._tag, self._u32, self._u16 = _STRUCTS[True]
            try:
                return self._skip_items(pos, depth)
            finally:
                self.implicit, self.little, self._tag, self._u32, self._u16 = saved
        return self._skip_items(pos, depth)

    def _skip_items(self, pos: int, depth: int) -> int:
        while True:
            tag, value, length, _ = self.header(pos)
            if tag == _SEQ_END:
                return value
            if tag != _ITEM:
                raise ScanError(f"expected an item at offset {pos}, found tag {tag:08X}")
            if length == UNDEFINED:
                pos = self.walk(value, depth + 1, until_item_end=True)
            else:
                pos = value + length
                if pos > self.size:
                    raise ScanError(f"item at offset {value} declares {length} bytes past the end")

    def walk(self, pos: int, depth: int, until_item_end: bool = False, result: ScanResult | None = None) -> int:
        last = -1
        while pos < self.size:
            if result is not None and pos + 8 > self.size:
                result.truncated = f"{self.size - pos} byte(s) of a cut-off element header at offset {pos}: truncated"
                return self.size
            tag, value, length, seq_like = self.header(pos)
            if tag == _ITEM_END and until_item_end:
                return value
            if tag <= last:
                self.disorder += 1
                if self.disorder > _MAX_DISORDER:
                    raise ScanError(f"tags do not ascend (at offset {pos}): not a dataset")
            last = tag
            if length == UNDEFINED:
                if not seq_like and not self.implicit:
                    raise ScanError(f"undefined length on a non-sequence element {tag:08X}")
                pos = self.skip_undefined(value, depth + 1)
                continue
            end = value + length
            if end > self.size:
                if result is not None:
                    result.truncated = (
                        f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes at offset {value} "
                        f"but the dataset ends at {self.size}: truncated"
                    )
                    return self.size
                raise ScanError(f"nested element {tag:08X} runs past the end")
            if seq_like and not self.implicit:
                self._check_items(value, end, depth + 1)
            elif result is not None and depth == 0 and tag <= _LAST_WANTED and tag in WANTED:
                raw = bytes(self.data[value:end])
                result.values[WANTED[tag]] = raw.decode("latin-1").strip(" \x00")
            pos = end
        if until_item_end:
            raise ScanError("item without an item delimiter")
        return pos

    def _check_items(self, pos: int, end: int, depth: int) -> None:
        """Defined-length sequence: every item must fit inside it."""
        while pos < end:
            tag, value, length, _ = self.header(pos)
            if tag != _ITEM:
                raise ScanError(f"expected an item at offset {pos}")
            pos = self.walk(value, depth + 1, until_item_end=True) if length == UNDEFINED else value + length
        if pos != end:
            raise ScanError(f"sequence items overrun their sequence by {pos - end} bytes")


def scan(data: bytes | memoryview, transfer_syntax: str) -> ScanResult:
    """Walk a dataset (no file meta) in the given transfer syntax; raise ScanError when it is not well formed."""
    implicit = transfer_syntax == IMPLICIT_VR_LE
    little = transfer_syntax != EXPLICIT_VR_BE
    try:
        result = ScanResult()
        _Walker(data, implicit, little).walk(0, 0, result=result)
        return result
    except ScanError as exc:
        if implicit or not str(exc).startswith("invalid VR") or not little:
            raise
        # Some senders label an implicit VR dataset as explicit; pydicom reads those too.
        result = ScanResult()
        _Walker(data, True, True).walk(0, 0, result=result)
        return result
    except struct.error as exc:
        raise ScanError(f"malformed element header: {exc}") from None
