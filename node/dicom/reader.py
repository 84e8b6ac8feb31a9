"""The one DICOM reader: Part 10 file meta, and one walk over a dataset's elements for every caller.

Three callers use it: the store (untrusted network input: `strict=True` proves that every element and every
sequence item fits, and hostile bytes fail in microseconds), the NIfTI volume builder and the workbook's header
scan (`read_header`: only the header is touched). The walk reads element headers only; values are sliced on
demand. A header is read with one 64 KiB read; a longer one (large Siemens CSA or Philips private sequences)
is walked over a memory mapping of the file, so it is never re-read whole and the pixel data is never read.

It is as lenient as pydicom where real senders deviate (an implicit dataset labelled explicit, UN elements
holding implicit sequences, a few out-of-order tags) and strict where a walk could be made expensive.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydicom.dataelem import RawDataElement

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
FIRST_PIXEL_TAG = 0x7FE00008  # Float Pixel Data; Double Float Pixel Data and Pixel Data follow
TRANSFER_SYNTAX_TAG = 0x00020010
PREAMBLE = 128
META_START = PREAMBLE + 4  # after "DICM"
META_MAX = 1 << 20  # a file meta group longer than this is not one we accept

LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_MAX_DEPTH = 32
_MAX_DISORDER = 64  # out-of-order tags tolerated per dataset before it is called malformed
_STRUCTS = {
    True: (struct.Struct("<HH"), struct.Struct("<I"), struct.Struct("<H")),
    False: (struct.Struct(">HH"), struct.Struct(">I"), struct.Struct(">H")),
}

_EXPLICIT_LE_HEADER = struct.Struct("<HH2sH")
# Short-form VRs (16-bit length) by their two bytes: one dict lookup both validates and names the VR.
_SHORT_VRS = {
    vr.encode("ascii"): vr
    for vr in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST",
               "TM", "UI", "UL", "US")
}

Buffer = bytes | bytearray | memoryview | mmap.mmap


class ReadError(ValueError):
    """The bytes are not a well-formed dataset (or not a Part 10 file where one was required)."""


class Element(NamedTuple):
    """A top-level element: its value is buf[offset:offset + length] (length UNDEFINED: items up to `end`).

    A NamedTuple, not a dataclass: a header walk makes one per element, and a tuple is the cheapest to build.
    """

    tag: int
    vr: str | None  # None for implicit VR
    offset: int
    length: int
    end: int  # position after the element (after its delimiter for undefined lengths)

    @property
    def value_end(self) -> int:
        return self.offset + self.length if self.length != UNDEFINED else self.end - 8


@dataclass(slots=True)
class Walk:
    """What one walk found: top-level elements (all, or the wanted ones), the pixel element, truncation."""

    implicit: bool
    little: bool
    elements: dict[int, Any] = field(default_factory=dict)  # Element, or pydicom RawDataElement in raw mode
    pixel: Element | None = None
    truncated: str | None = None
    unsupported: str | None = None  # raw mode: something pydicom's own reader converts better (UN of undefined length)


@dataclass(frozen=True, slots=True)
class FileMeta:
    """Part 10 file meta: raw values of group 0002 and where the dataset starts."""

    values: dict[int, bytes]
    dataset_offset: int

    @property
    def transfer_syntax(self) -> str:
        return self.values.get(TRANSFER_SYNTAX_TAG, b"").decode("ascii", "replace").strip(" \x00")

    def text(self, tag: int) -> str:
        return self.values.get(tag, b"").decode("ascii", "replace").strip(" \x00")


# ---------------------------------------------------------------------------------------------- file meta


def is_part10(head: Buffer) -> bool:
    return len(head) >= META_START and head[PREAMBLE:META_START] == b"DICM"


def parse_meta(buf: Buffer) -> FileMeta:
    """Group 0002 of a Part 10 file (always explicit VR little endian); raise ReadError when there is none."""
    if not is_part10(buf):
        raise ReadError("not a Part 10 file (no DICM marker after the preamble)")
    values: dict[int, bytes] = {}
    size = len(buf)
    pos = META_START
    end_meta: int | None = None
    u32 = _STRUCTS[True][1]
    explicit_header = _EXPLICIT_LE_HEADER
    while pos + 8 <= size and (end_meta is None or pos < end_meta):
        group, elem, vr, length = explicit_header.unpack_from(buf, pos)
        if group != 0x0002:
            break
        start = pos + 8
        if vr in LONG_VRS:
            if pos + 12 > size:
                raise ReadError(f"file meta element at offset {pos} runs past the end")
            length, start = u32.unpack_from(buf, start)[0], pos + 12
        if length == UNDEFINED or start + length > size or start + length > META_MAX:
            raise ReadError(f"file meta element (0002,{elem:04X}) declares {length} bytes past the end")
        values[0x00020000 | elem] = bytes(buf[start : start + length])
        if elem == 0x0000 and length == 4:
            end_meta = start + 4 + u32.unpack_from(buf, start)[0]
        pos = start + length
    if end_meta is not None and end_meta <= size:
        pos = end_meta
    return FileMeta(values, pos)


def dataset_offset(head: Buffer) -> int:
    """Where the dataset starts after the preamble and file meta (0 when the bytes are not Part 10)."""
    try:
        return parse_meta(head).dataset_offset
    except ReadError:
        return 0


# ---------------------------------------------------------------------------------------------- the walk


class _Walker:
    def __init__(self, data: Buffer, implicit: bool, little: bool, strict: bool) -> None:
        self.data = data
        self.size = len(data)
        self.implicit = implicit
        self.little = little
        self.strict = strict
        self._tag, self._u32, self._u16 = _STRUCTS[little]
        self.disorder = 0
        self.un_sequence = False  # the element just read is UN with undefined length (implicit content)

    def _item(self, pos: int) -> tuple[int, int]:
        """(tag, length) of an item or delimiter header at pos (what a sequence's content must be made of)."""
        if pos + 8 > self.size:
            raise ReadError(f"item header at offset {pos} runs past the end ({self.size} bytes)")
        group, elem = self._tag.unpack_from(self.data, pos)
        return group << 16 | elem, self._u32.unpack_from(self.data, pos + 4)[0]

    def header(self, pos: int) -> tuple[int, str | None, int, int, bool]:
        """(tag, VR, value offset, length, is_sequence_like) of the element at pos."""
        if pos + 8 > self.size:
            raise ReadError(f"element header at offset {pos} runs past the end ({self.size} bytes)")
        group, elem = self._tag.unpack_from(self.data, pos)
        tag = group << 16 | elem
        self.un_sequence = False
        if group == 0xFFFE:  # item / delimiters have no VR
            return tag, None, pos + 8, self._u32.unpack_from(self.data, pos + 4)[0], False
        if self.implicit:
            length = self._u32.unpack_from(self.data, pos + 4)[0]
            return tag, None, pos + 8, length, length == UNDEFINED
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr in LONG_VRS:
            if pos + 12 > self.size:
                raise ReadError(f"element header at offset {pos} runs past the end")
            length = self._u32.unpack_from(self.data, pos + 8)[0]
            self.un_sequence = vr == b"UN" and length == UNDEFINED
            return tag, vr.decode("ascii"), pos + 12, length, vr == b"SQ" or length == UNDEFINED
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise ReadError(f"invalid VR {vr!r} at offset {pos}")
        return tag, vr.decode("ascii"), pos + 8, self._u16.unpack_from(self.data, pos + 6)[0], False

    def skip_undefined(self, pos: int, depth: int) -> int:
        """Skip the items of an undefined-length sequence (or encapsulated pixel data) starting at pos."""
        if depth > _MAX_DEPTH:
            raise ReadError("sequences nested too deep")
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
            tag, _, value, length, _ = self.header(pos)
            if tag == _SEQ_END:
                return value
            if tag != _ITEM:
                raise ReadError(f"expected an item at offset {pos}, found tag {tag:08X}")
            if length == UNDEFINED:
                pos = self.nested(value, depth + 1)
            else:
                pos = value + length
                if pos > self.size:
                    raise ReadError(f"item at offset {value} declares {length} bytes past the end")

    def nested(self, pos: int, depth: int) -> int:
        """Walk an undefined-length item's elements to its delimiter; return the position after it."""
        last = -1
        while pos < self.size:
            tag, _, value, length, seq_like = self.header(pos)
            if tag == _ITEM_END:
                return value
            last = self._order(tag, last, pos)
            pos = self._past(tag, value, length, seq_like, depth)
        raise ReadError("item without an item delimiter")

    def _order(self, tag: int, last: int, pos: int) -> int:
        if tag <= last:
            self.disorder += 1
            if self.disorder > _MAX_DISORDER:
                raise ReadError(f"tags do not ascend (at offset {pos}): not a dataset")
        return tag

    def _past(self, tag: int, value: int, length: int, seq_like: bool, depth: int) -> int:
        """Position after a nested element; its value must fit."""
        if length == UNDEFINED:
            if not seq_like and not self.implicit:
                raise ReadError(f"undefined length on a non-sequence element {tag:08X}")
            return self.skip_undefined(value, depth + 1)
        end = value + length
        if end > self.size:
            raise ReadError(f"nested element {tag:08X} runs past the end")
        if seq_like and self.strict and not self.implicit:
            self._check_items(value, end, depth + 1)
        return end

    def _check_items(self, pos: int, end: int, depth: int) -> None:
        """Defined-length sequence (strict mode): every item must fit inside it."""
        if depth > _MAX_DEPTH:
            raise ReadError("sequences nested too deep")
        while pos < end:
            tag, _, value, length, _ = self.header(pos)
            if tag != _ITEM:
                raise ReadError(f"expected an item at offset {pos}")
            pos = self.nested(value, depth + 1) if length == UNDEFINED else value + length
        if pos != end:
            raise ReadError(f"sequence items overrun their sequence by {pos - end} bytes")

    def flat_items(self, pos: int, end: int, wanted: Container[int]) -> list[dict[int, Element]]:
        """The items of the sequence whose value is data[pos:end] (end: after its delimiter for an undefined
        length), each flattened: the wanted elements of the item and of the first item of each standard (even
        group) sequence nested in it, to any depth. A private sequence is skipped whole (a vendor's copy of a
        standard macro must not override the standard one)."""
        items = []
        while pos < end:
            tag, _, value, length, _ = self.header(pos)
            if tag == _SEQ_END:
                break
            if tag != _ITEM:
                raise ReadError(f"expected an item at offset {pos}, found tag {tag:08X}")
            into: dict[int, Element] = {}
            pos = self._flat_item(value, None if length == UNDEFINED else value + length, wanted, into, 1)
            items.append(into)
        return items

    def _flat_item(self, pos: int, end: int | None, wanted: Container[int], into: dict[int, Element], depth: int) -> int:
        """Record an item's wanted elements into `into`; return the position after the item."""
        if depth > _MAX_DEPTH:
            raise ReadError("sequences nested too deep")
        limit = self.size if end is None else end
        data = self.data
        header = _EXPLICIT_LE_HEADER
        short_vrs = _SHORT_VRS
        while pos < limit:
            group, elem, vr_bytes, short_length = header.unpack_from(data, pos)
            short_vr = short_vrs.get(vr_bytes)
            if short_vr is not None and group != 0xFFFE:  # the common case: one unpack, no nesting
                tag = group << 16 | elem
                value_end = pos + 8 + short_length
                if value_end > limit:
                    raise ReadError(f"element {tag:08X} at offset {pos} runs past its item")
                if tag in wanted:
                    into[tag] = Element(tag, short_vr, pos + 8, short_length, value_end)
                pos = value_end
                continue
            if vr_bytes == b"SQ" and not group & 1:  # a standard sequence: flatten its first item into this one
                pos = self._first_item(pos + 12, self._u32.unpack_from(data, pos + 8)[0], wanted, into, depth + 1)
                if pos > limit:
                    raise ReadError(f"sequence ({group:04X},{elem:04X}) runs past its item")
                continue
            if group == 0xFFFE and elem == 0xE00D:  # the item's delimiter
                return pos + 8
            tag, vr, value, length, _ = self.header(pos)
            if length == UNDEFINED:
                pos = self.skip_undefined(value, depth + 1)
            else:
                pos = value + length
                if pos > limit:
                    raise ReadError(f"element {tag:08X} at offset {value} runs past its item")
                if tag in wanted:
                    into[tag] = Element(tag, vr, value, length, pos)
        if end is None:
            raise ReadError("item without an item delimiter")
        return pos

    def _first_item(self, pos: int, length: int, wanted: Container[int], into: dict[int, Element], depth: int) -> int:
        """Flatten the first item of a nested sequence into `into`; skip the others; return the position after it."""
        end = None if length == UNDEFINED else pos + length
        if end is not None and end > self.size:
            raise ReadError(f"sequence at offset {pos} runs past the end")
        first = True
        item_header = self._item
        while end is None or pos < end:
            tag, item_length = item_header(pos)
            value = pos + 8
            if tag == _SEQ_END:
                return value
            if tag != _ITEM:
                raise ReadError(f"expected an item at offset {pos}, found tag {tag:08X}")
            item_end = None if item_length == UNDEFINED else value + item_length
            if first:
                pos = self._flat_item(value, item_end, wanted, into, depth)
                first = False
            elif item_end is None:
                pos = self.nested(value, depth)
            else:
                pos = item_end
        return pos

    def top(self, pos: int, wanted: Container[int] | None, stop_at_pixels: bool, raw: bool = False) -> Walk:
        out = Walk(self.implicit, self.little)
        elements = out.elements
        size = self.size
        last = -1
        data = self.data
        fast = not self.implicit and self.little
        explicit_header = _EXPLICIT_LE_HEADER
        short_vrs = _SHORT_VRS
        while pos < size:
            if pos + 8 > size:
                out.truncated = f"{size - pos} byte(s) of a cut-off element header at offset {pos}: truncated"
                return out
            if fast:
                # The hot loop of every header read (thousands of files per series): one unpack for the common
                # short-VR element of explicit VR little endian; everything else takes the general path.
                group, elem, vr_bytes, short_length = explicit_header.unpack_from(data, pos)
                short_vr = short_vrs.get(vr_bytes)
                if short_vr is not None and group != 0xFFFE:
                    tag = group << 16 | elem
                    if tag <= last:
                        self._order(tag, last, pos)
                    last = tag
                    end = pos + 8 + short_length
                    if end > size:
                        out.truncated = (
                            f"element ({group:04X},{elem:04X}) declares {short_length} bytes at offset {pos + 8} "
                            f"but the dataset ends at {size}: truncated"
                        )
                        return out
                    if raw:
                        elements[tag] = RawDataElement(tag, short_vr, short_length, _bytes(data[pos + 8 : end]),
                                                       pos + 8, False, True)
                    elif wanted is None or tag in wanted:
                        elements[tag] = Element(tag, short_vr, pos + 8, short_length, end)
                    pos = end
                    continue
            tag, vr, value, length, seq_like = self.header(pos)
            last = self._order(tag, last, pos)
            if FIRST_PIXEL_TAG <= tag <= PIXEL_DATA and stop_at_pixels:
                out.pixel = Element(tag, vr, value, length, value if length == UNDEFINED else value + length)
                return out
            if length == UNDEFINED:
                if not seq_like and not self.implicit:
                    raise ReadError(f"undefined length on a non-sequence element {tag:08X}")
                end = self.skip_undefined(value, 1)
            else:
                end = value + length
                if end > size:
                    out.truncated = (
                        f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes at offset {value} "
                        f"but the dataset ends at {size}: truncated"
                    )
                    return out
                if seq_like and self.strict and not self.implicit:
                    self._check_items(value, end, 1)
            if raw:
                if length == UNDEFINED:
                    if vr not in (None, "SQ"):
                        out.unsupported = f"undefined length on {vr} element {tag:08X}"
                    content = _bytes(data[value : end - 8])
                    elements[tag] = RawDataElement(tag, "SQ", len(content), content, value,  # type: ignore[arg-type]
                                                   self.implicit, self.little)
                else:
                    elements[tag] = RawDataElement(tag, vr, length, _bytes(data[value:end]), value,  # type: ignore[arg-type]
                                                   self.implicit, self.little)
            elif wanted is None or tag in wanted:
                element = Element(tag, vr, value, length, end)
                if FIRST_PIXEL_TAG <= tag <= PIXEL_DATA:
                    out.pixel = element
                elements[tag] = element
            pos = end
        return out


def walk(
    data: Buffer,
    transfer_syntax: str,
    start: int = 0,
    *,
    wanted: Container[int] | None = None,
    stop_at_pixels: bool = False,
    strict: bool = False,
    raw: bool = False,
) -> Walk:
    """Walk the dataset in data[start:] (no file meta) in the given transfer syntax.

    wanted: the top-level tags to record (None: all). stop_at_pixels: end the walk at the first pixel data
    element (recorded in `pixel`, its value not walked). strict: also walk the items of defined-length
    sequences, so every nested element is proven to fit (network input). raw: record every top-level element
    as a pydicom RawDataElement holding its value bytes (pydicom converts it on access as if it had read it),
    in the same pass. A top-level element that runs past the end is reported in `truncated`; anything else
    malformed raises ReadError.
    """
    if transfer_syntax == DEFLATED_VR_LE:
        raise ReadError("deflated datasets are not read (an inflate can grow without bound)")
    implicit = transfer_syntax == IMPLICIT_VR_LE
    little = transfer_syntax != EXPLICIT_VR_BE
    try:
        try:
            return _Walker(data, implicit, little, strict).top(start, wanted, stop_at_pixels, raw)
        except ReadError as exc:
            if implicit or not little or not str(exc).startswith("invalid VR"):
                raise
            # Some senders label an implicit VR dataset as explicit; pydicom reads those too.
            return _Walker(data, True, True, strict).top(start, wanted, stop_at_pixels, raw)
    except struct.error as exc:
        raise ReadError(f"malformed element header: {exc}") from None


def sequence_items(data: Buffer, element: Element, wanted: Container[int]) -> list[dict[int, Element]]:
    """The items of an explicit VR little endian sequence element found by `walk`, each flattened (the wanted
    elements of the item and of its standard nested sequences' first items): an enhanced multi-frame image's
    functional groups, one dict per frame. ReadError when the bytes are malformed."""
    try:
        return _Walker(data, False, True, False).flat_items(element.offset, element.end, wanted)
    except struct.error as exc:
        raise ReadError(f"malformed element header: {exc}") from None


# ---------------------------------------------------------------------------------------------- files


def _bytes(value: Any) -> bytes:
    """Slices of bytes and mmap are bytes already; a memoryview's are not."""
    return value if type(value) is bytes else bytes(value)


@contextlib.contextmanager
def mapped(path: Path | str) -> Iterator[Buffer]:
    """The file's bytes without reading them: a read-only mapping (empty files give b"")."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size == 0:
            yield b""
            return
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            yield mm
    finally:
        os.close(fd)


_FIRST_READ = 64 * 1024


def read_header(
    path: Path | str,
    accept: Callable[[FileMeta], bool],
    *,
    wanted: Container[int] | None = None,
    raw: bool = False,
) -> tuple[FileMeta, Walk, bytes] | None:
    """Meta and the walk of a Part 10 file's header up to its pixel data, and the bytes the walk indexes.

    A small file (up to 64 KiB) is read with one read(), which costs less than mapping it; a larger one is
    memory-mapped, so its header is walked once whatever its length (big vendor private blocks) and its pixel
    data is never read. None when the file is not Part 10 or `accept(meta)` says no; ReadError when it is
    malformed.
    """
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size <= _FIRST_READ:
            head = fh.read()
            if not is_part10(head):
                return None
            meta = parse_meta(head)
            if not accept(meta):
                return None
            found = walk(head, meta.transfer_syntax, meta.dataset_offset, wanted=wanted, stop_at_pixels=True, raw=raw)
            return meta, found, head
    with mapped(path) as mm:
        meta = parse_meta(mm)
        if not accept(meta):
            return None
        found = walk(mm, meta.transfer_syntax, meta.dataset_offset, wanted=wanted, stop_at_pixels=True, raw=raw)
        end = found.pixel.offset if found.pixel is not None else len(mm)
        return meta, found, bytes(mm[:end])


def file_dataset_offset(path: Path | str) -> int:
    """Where the dataset starts in a file (0 when it is not Part 10)."""
    with mapped(path) as buf:
        return dataset_offset(buf)


def read_meta(path: Path | str) -> FileMeta:
    """The file meta of a Part 10 file (ReadError when it has none)."""
    with mapped(path) as buf:
        return parse_meta(buf)


def text(buf: Buffer, element: Element) -> str:
    """An element's value as text (latin-1, no padding): for UIDs, codes, numbers as strings."""
    return bytes(buf[element.offset : element.value_end]).decode("latin-1").strip(" \x00")
