"""Small pure validators for DICOM-typed values (AE titles, UIDs), used wherever input enters the node."""

from __future__ import annotations

import re

# PS3.5 9.1: UID components are digits without leading zeros, separated by dots, 64 chars max.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
# Older equipment wrote components with leading zeros ("1.2.840.0113..."). Still digits and dots only, so still
# safe as a file or folder name; the store accepts them (a pull of an old study must complete) and flags them.
_LEGACY_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
UID_MAX_LEN = 64
AE_MAX_LEN = 16


def is_valid_uid(value: object) -> bool:
    """True when value is a syntactically valid DICOM UID (safe to use as a file or folder name)."""
    return isinstance(value, str) and 0 < len(value) <= UID_MAX_LEN and _UID_RE.fullmatch(value) is not None


def is_legacy_uid(value: object) -> bool:
    """True for a UID that is valid but for components with leading zeros (accepted in storage, flagged)."""
    return (isinstance(value, str) and 0 < len(value) <= UID_MAX_LEN and _UID_RE.fullmatch(value) is None
            and _LEGACY_UID_RE.fullmatch(value) is not None)


def is_storable_uid(value: object) -> bool:
    """True for a valid UID or a legacy one: digits and dots, safe as a file or folder name."""
    return isinstance(value, str) and 0 < len(value) <= UID_MAX_LEN and _LEGACY_UID_RE.fullmatch(value) is not None


def uid_problem(value: object, allow_legacy: bool = False) -> str | None:
    """Why value is not a valid UID, or None when it is (allow_legacy: leading zeros in components pass)."""
    if not isinstance(value, str) or value == "":
        return "missing"
    if len(value) > UID_MAX_LEN:
        return f"longer than {UID_MAX_LEN} characters"
    if _UID_RE.fullmatch(value) is None:
        if allow_legacy and _LEGACY_UID_RE.fullmatch(value) is not None:
            return None
        return "not a dotted sequence of numbers without leading zeros"
    return None


def ae_title_problem(value: str) -> str | None:
    """Why value is not a usable AE title (PS3.5 AE VR), or None when it is."""
    stripped = value.strip(" ")
    if not stripped:
        return "AE title is empty"
    if len(value) > AE_MAX_LEN:
        return f"AE title {value!r} is longer than {AE_MAX_LEN} characters"
    if "\\" in value or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        return f"AE title {value!r} contains a backslash, control or non-ASCII character"
    return None
