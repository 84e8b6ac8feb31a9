"""Header values as numbers: one reading for a pydicom Dataset, the fast reader's dict and an enhanced frame's layers."""

from __future__ import annotations

import math
from typing import Any

import pydicom

# A pydicom Dataset, the keyword -> value dict of the fast reader (headers.py), or the layers of an enhanced
# multi-frame image's frame (volumes._Layers): all three answer .get(keyword).
Values = Any


def num(ds: Values, keyword: str, default: float | None = None) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        if len(value) == 0:
            return default
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def as_int(ds: Values, keyword: str) -> int | None:
    value = num(ds, keyword)
    return None if value is None else round(value)


def floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(map(math.isfinite, out)) else None
