"""Decode DICOM text values by their declared Specific Character Set, with a documented fallback."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.charset import TEXT_VR_DELIMS, decode_bytes, python_encoding
from pydicom.valuerep import PersonName

log = logging.getLogger(__name__)

ESC = 0x1B

# Tried in this order when the declaration is missing or does not decode the bytes. UTF-8 first because
# a non-UTF-8 text almost never decodes as valid UTF-8; GB18030 next because undeclared non-ASCII names
# in our sites' archives are overwhelmingly Chinese; Latin-1 last because it decodes anything.
FALLBACK_ENCODINGS: tuple[str, ...] = ("utf-8", "gb18030", "latin-1")

# Terms meaning "ASCII only": bytes >= 0x80 under these declarations are a missing declaration.
_DEFAULT_TERMS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})

# Single-byte 8-bit character sets: a UTF-8 multibyte sequence under one of these is a wrong declaration.
_SINGLE_BYTE_8BIT = frozenset(
    {
        "latin_1",
        "iso8859_2",
        "iso8859_3",
        "iso8859_4",
        "iso_ir_126",
        "iso_ir_127",
        "iso_ir_138",
        "iso_ir_144",
        "iso_ir_148",
        "iso_ir_166",
    }
)

PN_VR = "PN"


@dataclass(frozen=True)
class Decoded:
    """A decoded text value; fallback says why the declared character set was not used (None if it was)."""

    text: str
    fallback: str | None = None


def normalise_charsets(value: object) -> list[str]:
    """SpecificCharacterSet as a list of defined terms ('' for an empty first value); [] when absent."""
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str):
        return [part.strip() for part in value.split("\\")] if value.strip() else []
    if isinstance(value, Sequence):
        return [str(part).strip() for part in value]
    return [str(value).strip()]


def decode_text(raw: bytes, declared: Sequence[str], vr: str = "LO") -> Decoded:
    """Decode raw text bytes of a PN/SH/LO/ST/LT/UT/UC value.

    The declared character set (terms of SpecificCharacterSet) is used when it decodes the bytes cleanly.
    Otherwise FALLBACK_ENCODINGS are tried in order and Decoded.fallback explains what happened, so the
    caller can flag the row. Trailing padding (spaces, NULs) is removed.
    """
    if ESC not in raw and max(raw, default=0) < 0x80:
        return Decoded(raw.decode("ascii").rstrip(" \x00"))

    terms = list(declared)
    unknown = [t for t in terms if t and t not in python_encoding]
    if unknown:
        return _fallback(raw, f"unknown SpecificCharacterSet {'/'.join(unknown)!r}")
    if not terms or all(t in _DEFAULT_TERMS for t in terms):
        reason = "no SpecificCharacterSet" if not terms else f"SpecificCharacterSet {'/'.join(terms)!r} is ASCII only"
        return _fallback(raw, reason)

    if terms[0] == "":
        terms[0] = "ISO_IR 6"
    encodings = [python_encoding[t] for t in terms]
    label = "/".join(terms)

    if ESC in raw or len(encodings) > 1:
        text = _decode_code_extensions(raw, encodings, vr)
        if text is not None:
            return Decoded(text.rstrip(" \x00"))
        return _fallback(raw, f"SpecificCharacterSet {label!r} does not decode the value")

    encoding = encodings[0]
    if encoding in _SINGLE_BYTE_8BIT and _is_multibyte_utf8(raw):
        return Decoded(raw.decode("utf-8").rstrip(" \x00"), f"SpecificCharacterSet {label!r} but bytes are UTF-8")
    try:
        return Decoded(raw.decode(encoding).rstrip(" \x00"))
    except UnicodeDecodeError:
        return _fallback(raw, f"SpecificCharacterSet {label!r} does not decode the value")


def _decode_code_extensions(raw: bytes, encodings: list[str], vr: str) -> str | None:
    """Decode ISO 2022 code extensions with pydicom; None when a fragment could not be decoded."""
    text = str(PersonName(raw).decode(encodings)) if vr == PN_VR else decode_bytes(raw, encodings, TEXT_VR_DELIMS)
    # pydicom substitutes U+FFFD (and warns) rather than failing: that is our failure signal.
    if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
        return None
    return text


def _is_multibyte_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fallback(raw: bytes, reason: str) -> Decoded:
    if ESC in raw:
        try:
            text = raw.decode("iso2022_jp_2")
        except UnicodeDecodeError:
            pass
        else:
            return Decoded(text.rstrip(" \x00"), f"{reason}; decoded as iso2022_jp_2")
    for encoding in FALLBACK_ENCODINGS:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        return Decoded(text.rstrip(" \x00"), f"{reason}; decoded as {encoding}")
    # latin-1 decodes any byte string, so this is unreachable unless FALLBACK_ENCODINGS is changed.
    return Decoded(raw.decode("latin-1", errors="replace").rstrip(" \x00"), f"{reason}; decoded as latin-1")
